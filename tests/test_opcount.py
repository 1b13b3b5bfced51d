"""bench --count-ops: the dispatch-mode counter, the phases of one generate(), the CLI (upstream backend)."""

import json
import os

import pytest
import torch

import llava_freepruner
from llava_freepruner.tools.bench import count, model
from llava_freepruner.tools.bench.opcount import HOST, PLUGIN, OpCounter
from llava_freepruner.tools.cli import main


def tally(function):
    with torch.no_grad(), OpCounter() as counter:
        function()
    return counter.tallies["all"]


# --- the counter --------------------------------------------------------------------


def test_ops_are_counted_and_views_are_not():
    def toy():
        x = torch.ones(3, 4)
        y = (x @ x.t()).reshape(-1).softmax(0)           # reshape of a non-contiguous result: a copy
        z = y.view(3, 3).transpose(0, 1).contiguous()     # contiguous of a transpose: a copy
        z[0].unsqueeze(0).expand(2, 3)

    counted = tally(toy)
    assert dict(counted.names) == {(HOST, "ones"): 1, (HOST, "mm"): 1, (HOST, "_softmax"): 1, (HOST, "clone"): 1}
    assert counted.ops[HOST] == 4 and not counted.syncs


x = torch.arange(6.0).reshape(2, 3)


@pytest.mark.parametrize("name, read", [
    ("item", lambda: x[0, 1].item()),
    ("int", lambda: int(x[0, 1])),
    ("bool", lambda: bool(x[0, 1])),
    ("bool-mask indexing", lambda: x[x > 2]),
    ("bool-mask assignment", lambda: x.clone().__setitem__(x > 2, 0.0)),
    ("nonzero", lambda: x.nonzero()),
    ("one-argument where", lambda: torch.where(x > 2)),
    ("bincount", lambda: torch.bincount(torch.tensor([0, 2, 2]))),
    ("unique", lambda: torch.unique(x)),
    ("tensor repeats", lambda: torch.repeat_interleave(x, torch.tensor([1, 2]), dim=0)),
    ("tolist", lambda: x.tolist()),
    ("numpy", lambda: x.numpy()),
    ("cpu", lambda: x.cpu()),
    ("to cpu", lambda: x.to("cpu")),
    ("tensor on the device", lambda: torch.tensor([1, 2], device=x.device)),
])
def test_each_host_read_counts_one_sync(name, read):
    assert tally(read).syncs == {HOST: 1}, name


@pytest.mark.parametrize("name, stays", [
    ("integer indexing", lambda: x[torch.tensor([0, 1])]),
    ("repeats with their total", lambda: torch.repeat_interleave(x, torch.tensor([1, 2]), dim=0, output_size=3)),
    ("to the model's device", lambda: x.to(x.device)),
    ("tensor on the host", lambda: torch.tensor([1, 2])),
    ("topk and sort", lambda: x.flatten().topk(2).indices.sort()),
])
def test_device_side_work_counts_no_sync(name, stays):
    assert not tally(stays).syncs, name


def test_python_level_patches_are_undone():
    before = (torch.Tensor.tolist, torch.Tensor.to, torch.tensor)
    tally(lambda: x.tolist())
    assert (torch.Tensor.tolist, torch.Tensor.to, torch.tensor) == before
    assert "tolist" not in torch.Tensor.__dict__


def test_ops_are_attributed_to_the_plugin_by_their_caller_file(tmp_path):
    """Code in the package is the plugin's, code in its bench harness or elsewhere is the host's."""
    package = os.path.dirname(llava_freepruner.__file__)
    source = "def work(x):\n    return (x * 2).sum().item()\n"
    works = {}
    for owner, path in ((PLUGIN, os.path.join(package, "runtime", "methods", "fake.py")),
                        (HOST, os.path.join(package, "tools", "bench", "fake.py")),
                        (HOST, str(tmp_path / "host.py"))):
        scope = {}
        exec(compile(source, path, "exec"), scope)
        works[path] = (owner, scope["work"])
    for path, (owner, work) in works.items():
        counted = tally(lambda: work(x))
        assert counted.ops == {owner: 3} and counted.syncs == {owner: 1}, path
        assert bool(counted.sync_sites) == (owner == PLUGIN)
    sites = tally(lambda: works[os.path.join(package, "runtime", "methods", "fake.py")][1](x)).sync_sites
    assert sites == {"llava_freepruner/runtime/methods/fake.py:2 (_local_scalar_dense)": 1}


# --- one generate() ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    bench = model.build_random("tiny-llava-v1.5", 3, 2, "cpu", torch.float16)
    return bench, model.make_inputs(bench, 2, 12)


def test_the_unpatched_model_costs_no_plugin_op(tiny):
    counts = count.count_row(*tiny, "none", 1.0, new_tokens=3)
    assert counts.decode_steps == 2
    for phase in count.PHASES:
        assert counts.phases[phase].plugin_ops == counts.phases[phase].plugin_syncs == 0, phase
    for phase in ("tower", "between", "prefill", "decode"):     # the host runs in every phase
        assert counts.phases[phase].host_ops > 0, phase
    assert counts.per_step("decode").host_ops == counts.phases["decode"].host_ops / 2
    assert not counts.sync_sites and not counts.plugin_op_names


def test_a_vision_method_pays_before_the_llm_and_an_llm_method_inside_it(tiny):
    """Where the plugin's work lands; how much of it is left to the methods' own tests."""
    vision = count.count_row(*tiny, "freepruner", 0.5)
    assert vision.phases["tower"].plugin_ops + vision.phases["between"].plugin_ops > 0
    assert vision.phases["prefill"].plugin_ops == vision.phases["decode"].plugin_ops == 0
    llm = count.count_row(*tiny, "fastv", 0.5)
    assert llm.phases["tower"].plugin_ops == 0 and llm.phases["prefill"].plugin_ops > 0
    assert llm.before_decode.plugin_ops == sum(llm.phases[p].plugin_ops for p in count.BEFORE_DECODE)


# --- the CLI -------------------------------------------------------------------------


def test_count_ops_cli_writes_a_row_per_method_ratio_and_batch_size(tmp_path, capsys):
    code = main(["bench", "--random-weights", "tiny-llava-v1.5", "--llm-layers", "3", "--vision-layers", "2",
                 "--count-ops", "--methods", "none,grid,fastv", "--ratios", "1.0,0.5", "--batch-size", "1,2",
                 "--new-tokens", "2", "--text-tokens", "12", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "op_counts.json").read_text())
    assert data["meta"]["dtype"] == "float16" and data["meta"]["batch_sizes"] == [1, 2]
    assert data["meta"]["phases"] == list(count.PHASES)
    rows = {(r["method"], r["ratio"], r["batch_size"]): r for r in data["records"]}
    assert sorted(rows) == sorted([(m, r, b) for b in (1, 2) for r in (1.0, 0.5) for m in ("grid", "fastv")]
                                  + [("none", 1.0, 1), ("none", 1.0, 2)])
    for r in rows.values():
        for phase in count.PHASES:
            for key in ("plugin_ops", "plugin_syncs", "host_ops", "host_syncs"):
                assert r[f"{phase}_{key}"] >= 0
        assert r["decode_steps"] == 1 and r["tower_host_ops"] > 0
    assert rows[("none", 1.0, 2)]["tower_plugin_ops"] == 0
    printed = capsys.readouterr().out
    assert printed.count("\n| fastv | 0.5 |") == 2 and "plugin decode/step" in printed
    assert (tmp_path / "op_counts.md").read_text().strip() == printed.strip()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "8,8", "--count-ops"], "--batch-size '8,8' is not valid: expected a number >= 1 or a comma"),
    (["--batch-size", "0", "--count-ops"], "--batch-size '0' is not valid: expected a number >= 1 or a comma"),
    (["--batch-size", "one"], "--batch-size 'one' is not valid: expected a number >= 1"),
    (["--count-ops", "--clock", "thread"], "--clock applies to timing runs, not to --count-ops"),
    (["--count-ops", "--capture-memory"], "--capture-memory applies to timing runs, not to --count-ops"),
])
def test_bad_count_flags_are_named(flags, message, tmp_path, capsys):
    code = main(["bench", "--random-weights", "tiny-llava-v1.5", "--device", "cpu", "--out", str(tmp_path), *flags])
    assert code == 2 and message in capsys.readouterr().err


def test_keep_going_records_a_failing_row_and_counts_the_others(monkeypatch):
    def fake_count_row(bench, inputs, method, ratio, new_tokens, seed):
        if method == "grid":
            raise RuntimeError("grid broke")
        return count.GenerateCounts({p: count.PhaseCounts(plugin_ops=1) for p in count.PHASES}, decode_steps=1)

    monkeypatch.setattr(count, "count_row", fake_count_row)
    records = count.count_rows(None, {1: None}, ["grid", "random"], [0.5], 2, 0, lambda text: None, keep_going=True)
    assert records[0] == {"method": "grid", "ratio": 0.5, "batch_size": 1, "error": "RuntimeError: grid broke"}
    assert records[1]["between_plugin_ops"] == 1 and records[1]["decode_plugin_ops"] == 1
    table = count.markdown({"model": "m", "backend": "b", "dtype": "d", "device": "cpu", "command": "c"}, records)
    assert "| grid | 0.5 | 1 | failed: RuntimeError: grid broke |" in table
    with pytest.raises(RuntimeError, match="grid broke"):
        count.count_rows(None, {1: None}, ["grid"], [0.5], 2, 0, lambda text: None)
