"""The bench: end to end on a tiny checkpoint, the oracle's token count, FLOPs, inputs."""

import contextlib
import io
import json
import re

import pytest
import torch

from llava_freepruner.tools.bench import archs, flops, probe as bench_probe
from llava_freepruner.tools.bench.runner import (
    NOISE, STAGES, Settings, compare, plugin_config, quartiles, resolve_rounds, schedule,
)
from llava_freepruner.tools.cli import main

RATIOS = (1.0, 0.5)
METHODS = ("cls_topk", "freepruner", "grid", "random", "visionzip", "divprune")
BATCHES = (1, 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from llava_freepruner.fixtures import tiny

    return tiny.build(str(tmp_path_factory.mktemp("bench-tiny")))


@pytest.fixture(scope="module")
def results(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        code = main(["bench", "--model", checkpoint, "--methods", ",".join(METHODS),
                     "--ratios", ",".join(map(str, RATIOS)), "--repeats", "2", "--batch-size", ",".join(map(str, BATCHES)),
                     "--warmup", "1", "--new-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0, log.getvalue()[-3000:]
    with open(out / "results.json") as handle:
        return out, json.load(handle), log.getvalue()


# --- end to end -------------------------------------------------------------------


def test_bench_writes_one_well_formed_record_per_method_ratio_and_batch_size(results):
    out, data, _ = results
    records = data["records"]
    assert sorted((r["method"], r["ratio"], r["batch_size"]) for r in records) == sorted(
        (m, r, b) for m in ("oracle",) + METHODS for r in RATIOS for b in BATCHES)
    numeric = ("vision_ms", "select_ms", "llm_prefill_ms", "ttft_ms", "decode_tok_s", "peak_mem_mb", "prefill_flops")
    for r in records:
        assert r["visual_tokens"] == (576 if r["ratio"] == 1.0 else 288)
        for key in numeric:
            # select_ms may be 0: the oracle and ratio 1.0 select nothing
            assert isinstance(r[key], (int, float)) and (r[key] > 0 or key == "select_ms" and r[key] == 0), \
                (r["method"], key, r[key])
        # Stages are parts of the time to first token.
        assert r["ttft_ms"] > r["llm_prefill_ms"] and r["ttft_ms"] > r["vision_ms"]
        assert r["repeats"] == 2 and r["warmup"] == 1 and len(r["layer_tokens"]) == 2
        assert r["layer_tokens"] == [r["llm_input_tokens"]] * 2
        assert r["prefill_flops"] == r["llm_prefill_flops"] + r["vision_flops"] + r["projector_flops"]
        assert r["clock"] == "wall" and r["apply_ms"] > 0
    assert data["meta"]["weights"] == "checkpoint" and data["meta"]["llm_layers"] == 2
    assert data["meta"]["backend"] == "upstream" and data["meta"]["batch_sizes"] == list(BATCHES)
    assert (data["meta"]["repeats"], data["meta"]["warmup"]) == (2, 1)
    text = (out / "results.md").read_text()
    assert text.count("\n| oracle |") == 2 * len(BATCHES) and "Command: `python -m llava_freepruner bench" in text
    assert "shuffled round-robin rounds" in text
    with open(out / "time_vs_tokens.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_method_is_compared_with_the_oracle_of_its_ratio_and_batch_size(results):
    # Structure only: which method is faster is the benchmark's output, not something to assert.
    records = results[1]["records"]
    by_key = {(r["method"], r["ratio"], r["batch_size"]): r for r in records}
    assert {(r["ratio"], r["batch_size"]) for r in records if r["method"] == "oracle"} == {
        (r, b) for r in RATIOS for b in BATCHES}
    for r in records:
        oracle = by_key[("oracle", r["ratio"], r["batch_size"])]
        assert r["efficiency"] == pytest.approx(oracle["ttft_ms"] / r["ttft_ms"], rel=1e-3)
        assert r["llm_input_tokens"] == oracle["llm_input_tokens"]
        assert isinstance(r["warnings"], list)
    assert all(by_key[("oracle", r, b)]["efficiency"] == 1.0 for r in RATIOS for b in BATCHES)


def test_every_stage_has_a_median_inside_its_quartiles_and_the_stages_add_up(results):
    for r in results[1]["records"]:
        for key in (*STAGES, "decode_tok_s"):
            spread = r["spread"][key]
            assert spread["q1"] <= r[key] <= spread["q3"], (r["method"], key, spread, r[key])
            assert spread["iqr"] == pytest.approx(spread["q3"] - spread["q1"], abs=2e-3)
        # call by call the stages follow each other inside the time to first token
        assert r["vision_ms"] > 0 and r["llm_prefill_ms"] > 0
        assert r["spread"]["selection_ms"]["q1"] >= 0 and r["spread"]["rest_ms"]["q1"] >= 0


def test_every_row_warms_up_before_the_first_round_and_runs_each_round_once(results):
    log = results[2]
    calls = re.findall(r"\[\d+/\d+\] (\S+ ratio \S+ batch \d+)\s+(warm-up|repeat (\d)/2)", log)
    rows = {label for label, _, _ in calls}
    assert len(rows) == len(("oracle",) + METHODS) * len(RATIOS) * len(BATCHES)
    phases = [phase for _, phase, _ in calls]
    assert phases[:len(rows)] == ["warm-up"] * len(rows) and "warm-up" not in phases[len(rows):]
    rounds = [[label for label, _, n in calls if n == str(k)] for k in (1, 2)]
    assert calls[len(rows):] == [c for c in calls if c[2] == "1"] + [c for c in calls if c[2] == "2"]
    assert all(sorted(r) == sorted(rows) for r in rounds) and rounds[0] != rounds[1]


def test_fewer_visual_tokens_mean_fewer_prefill_flops(results):
    records = [r for r in results[1]["records"] if r["batch_size"] == 1]
    for method in ("oracle",) + METHODS:
        full, half = (next(r for r in records if r["method"] == method and r["ratio"] == x) for x in RATIOS)
        assert half["llm_prefill_flops"] < full["llm_prefill_flops"]
        assert half["vision_flops"] == full["vision_flops"]


def test_side_by_side_lines_up_the_rows_of_two_runs(results, tmp_path, capsys):
    from llava_freepruner.tools.bench import side_by_side

    out, data, _ = results
    other = tmp_path / "other"
    other.mkdir()
    twin = dict(data, meta=dict(data["meta"], backend="transformers"),
                records=[r for r in data["records"] if r["method"] != "grid"])
    (other / "results.json").write_text(json.dumps(twin))
    assert side_by_side.main([str(out), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    rows = {tuple(c[:3]): c for c in cells}
    header = rows[("method", "ratio", "batch")]
    mine, theirs = (side_by_side.label(d["meta"]) for d in (data, twin))
    assert theirs.startswith("transformers ")
    assert header.index(f"efficiency ({mine})") + 1 == header.index(f"efficiency ({theirs})")
    assert rows[("oracle", "0.5", "2")][header.index(f"efficiency ({theirs})")] == "1.000"
    assert rows[("grid", "1.0", "1")][header.index(f"TTFT ms ({theirs})")] == "n/a"
    assert rows[("grid", "1.0", "1")][header.index(f"visual tokens ({mine})")] == "576"
    assert side_by_side.main([str(out), str(out)]) == 2
    assert side_by_side.main([str(out), str(tmp_path / "missing")]) == 2
    assert "holds no results.json" in capsys.readouterr().err


# --- how the rows are timed and compared, without a clock ---------------------------------


def test_schedule_warms_every_row_up_first_then_shuffles_each_round():
    order = schedule(rows=6, warmup=3, repeats=10, seed=0)
    assert order[:18] == [(i, None) for i in range(6) for _ in range(3)]
    rounds = [[i for i, k in order[18:] if k == r] for r in range(10)]
    assert [k for _, k in order[18:]] == [r for r in range(10) for _ in range(6)]     # round after round
    assert all(sorted(r) == list(range(6)) for r in rounds)                          # every row once a round
    assert len({tuple(r) for r in rounds}) > 1                                      # not one fixed order
    assert schedule(6, 3, 10, seed=0) == order and schedule(6, 3, 10, seed=1) != order


def test_cuda_defaults_and_minimums_cpu_stays_small():
    assert resolve_rounds("cpu", None, None) == (1, 3, [])
    assert resolve_rounds("cuda", None, None) == (3, 10, [])
    assert resolve_rounds("cuda", 5, 20) == (5, 20, [])
    warmup, repeats, warnings = resolve_rounds("cuda", 1, 3)
    assert (warmup, repeats) == (1, 3)
    assert [w.split()[0] for w in warnings] == ["--warmup", "--repeats"] and "below 10" in warnings[1]
    assert resolve_rounds("cpu", 0, 1) == (0, 1, [])


def test_quartiles_bracket_the_median():
    assert quartiles([5.0]) == (5.0, 5.0, 5.0)
    q1, median, q3 = quartiles([4.0, 1.0, 3.0, 2.0, 100.0])
    assert (q1, median, q3) == (2.0, 3.0, 4.0)
    assert quartiles([1.0, 2.0]) == (1.25, 1.5, 1.75)


def _row(method, prefill, visual=288, batch=1, ratio=0.5, clock="cuda events", **extra):
    stages = dict(vision_ms=10.0, selection_ms=1.0, llm_prefill_ms=prefill, rest_ms=2.0)
    return {"method": method, "ratio": ratio, "batch_size": batch, "visual_tokens": visual, "clock": clock,
            "layer_tokens": [40 + visual] * 2, "ttft_ms": sum(stages.values()), "select_ms": None, **stages, **extra}


def test_a_row_whose_prefill_strays_from_the_oracles_at_the_same_tokens_is_warned_about():
    records = compare([
        _row("oracle", 20.0), _row("grid", 20.0 * (1 + NOISE) - 0.01), _row("random", 23.0),
        _row("freepruner", 15.0, vision_ms=12.5, selection_ms=1.5),
        _row("fastv", 40.0, visual=576) | {"layer_tokens": [616, 328]},      # fewer tokens after layer 2: not the same
        _row("oracle", 100.0, batch=8), _row("random", 100.0, batch=8),       # its own oracle: batch 8
        {"method": "divprune", "ratio": 0.5, "batch_size": 1, "error": "RuntimeError: broke"},
    ])
    warned = {(r["method"], r["batch_size"]) for r in records if r.get("warnings")}
    assert warned == {("random", 1), ("freepruner", 1)}
    message = next(r for r in records if r["method"] == "random")["warnings"][0]
    assert "23.0 ms" in message and "20.0 ms" in message and "+15%" in message and "288 visual tokens" in message
    by_method = {(r["method"], r["batch_size"]): r for r in records}
    # on CUDA a vision method's select time is its tower and selection stages over the oracle's
    assert by_method[("freepruner", 1)]["select_ms"] == pytest.approx(3.0)
    assert by_method[("oracle", 1)]["select_ms"] == 0 and by_method[("fastv", 1)]["select_ms"] is None
    assert "warnings" not in by_method[("divprune", 1)]


def test_call_stages_come_from_the_marks_after_one_finish():
    class Marks(bench_probe.HostMarks):
        finished = 0

        def finish(self):
            self.finished += 1

    marks = Marks()
    call = bench_probe.Call(start=0.0, towers=[[1.0, 3.0], [4.0, 6.0]], prefill=[8.0, 20.0], first_token=25.0)
    call.finish(marks)
    assert marks.finished == 1
    assert (call.vision_s, call.select_s, call.prefill_s, call.ttft_s) == (4.0, 2.0, 12.0, 25.0)


def test_on_cuda_a_call_is_timed_by_events_with_one_synchronize_after_it(checkpoint, monkeypatch):
    """The CUDA path on a CPU model: events and synchronize replaced by recorders. Inside the
    call the hooks only record events; the one synchronize after it (and one before, outside
    the timed region) are all."""
    from llava_freepruner.tools.bench import model as bench_model
    from llava_freepruner.tools.bench.runner import generate

    timeline = []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = len(timeline)
            timeline.append("event")

        def elapsed_time(self, end):
            return float(end.at - self.at)      # "ms": events apart

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: timeline.append("sync"))
    bench = bench_model.load_checkpoint(checkpoint, "cpu", torch.float32)
    inputs = bench_model.make_inputs(bench, batch_size=1, text_tokens=4)
    probe = bench_probe.Probe(bench.parts, torch.device("cuda"))
    try:
        with probe.call() as scope, torch.inference_mode():
            generate(bench, inputs, 3, scope.streamer)
    finally:
        probe.remove()
    # start, tower start and end, prefill start and end, first token; then the one synchronize
    assert timeline == ["sync"] + ["event"] * 6 + ["sync"]
    call = scope.call
    assert (call.vision_s, call.select_s, call.prefill_s, call.ttft_s) == (0.001, 0.001, 0.001, 0.005)
    assert len(call.token_times) == 3


def test_bad_batch_sizes_are_refused_by_name(checkpoint, capsys):
    for text in ("0", "1,x", "8,8"):
        assert main(["bench", "--model", checkpoint, "--batch-size", text, "--device", "cpu"]) == 2
        assert f"--batch-size {text!r} is not valid" in capsys.readouterr().err


# --- the oracle feeds K tokens to the LLM -------------------------------------------------


def test_oracle_feeds_exactly_k_visual_tokens_to_the_llm(checkpoint):
    import llava_freepruner
    from llava_freepruner.runtime import backends
    from llava_freepruner.tools.bench import model as bench_model, oracle

    bench = bench_model.load_checkpoint(checkpoint, "cpu", torch.float32)
    inputs = bench_model.make_inputs(bench, batch_size=2, text_tokens=0)
    seen = []
    handle = bench.model.get_model().register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape) if kw.get("inputs_embeds") is not None else None,
        with_kwargs=True)
    try:
        for budget in (100, 7):
            llava_freepruner.apply(plugin_config("oracle", 1.0, "cpu", None, 0).replace(ratio=None, tokens=budget))
            backends.set_vision_method(oracle.FirstK())
            assert not oracle.FirstK().attention_layers(4, 2)
            with torch.inference_mode():
                bench.model.generate(**inputs.generate_kwargs, max_new_tokens=1, do_sample=False, pad_token_id=0)
            assert seen[-1] == (2, inputs.text_tokens + budget, bench.model.config.hidden_size)
            llava_freepruner.remove()
    finally:
        handle.remove()
        llava_freepruner.remove()


# --- FLOPs against hand computations --------------------------------------------------------


def test_decoder_flops_match_a_hand_computation():
    shape = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=2, vocab=10)
    # per layer at 5 tokens: q,k,v,o 2*5*8*32 = 2560; QK^T + AV 4*25*8 = 800; MLP 6*5*8*16 = 3840
    assert flops.decoder_layer_flops(shape, 5) == 7200
    # two layers (the first dropped 2 tokens), then the LM head over 3 positions: 2*3*8*10 = 480
    assert flops.llm_prefill_flops(shape, [5, 3], 3) == 7200 + (2 * 3 * 8 * 32 + 4 * 9 * 8 + 6 * 3 * 8 * 16) + 480
    assert flops.llm_prefill_flops(shape, [5, 3], 5) - flops.llm_prefill_flops(shape, [5, 3], 3) == 2 * 2 * 8 * 10
    grouped = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)
    assert flops.decoder_layer_flops(grouped, 5) == 7200 - 2 * 5 * 8 * 8     # k, v are 4 wide, not 8


def test_decoder_flops_equal_twice_the_weights_plus_attention_on_a_real_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_attention_heads=8, num_key_value_heads=2, vocab_size=50)
    weights = sum(m.weight.numel() for m in LlamaDecoderLayer(config, 0).modules() if isinstance(m, torch.nn.Linear))
    n = 37
    assert flops.decoder_layer_flops(flops.DecoderShape.from_config(config), n) == 2 * n * weights + 4 * n * n * 64


def test_vision_and_projector_flops_match_a_hand_computation():
    shape = flops.EncoderShape(hidden=4, intermediate=8, layers=2, patch=2)
    # 4 patches + CLS = 5 tokens; embed 2*4*(3*2*2)*4 = 384;
    # layer: q,k,v,o 2*5*4*16 = 640, attention 4*25*4 = 400, MLP 4*5*4*8 = 640
    assert flops.vision_flops(shape, 4) == 384 + 2 * 1680
    assert flops.vision_flops(shape, 4, crops=3) == 3 * (384 + 2 * 1680)
    assert flops.projector_flops([(4, 6), (6, 6)], 10) == 2 * 10 * (24 + 36)
    with pytest.raises(ValueError, match="layer_tokens"):
        flops.llm_prefill_flops(flops.DecoderShape(8, 16, 2, 2, 10), [], 0)


# --- architectures and bad inputs ---------------------------------------------------------------


def test_published_architectures_have_the_real_sizes():
    llm, vision = archs.architecture("llava-v1.5-7b")
    assert (llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]) == (4096, 11008, 32)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["image_size"], vision["patch_size"]) == (1024, 24, 336, 14)
    llm, _ = archs.architecture("llava-v1.5-13b")
    assert (llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]) == (5120, 13824, 40)
    llm, _ = archs.architecture("llava-v1.6-7b", llm_layers=2, vision_layers=6)
    assert llm["image_aspect_ratio"] == "anyres" and llm["num_hidden_layers"] == 2
    assert archs.ARCHITECTURES["llava-v1.6-7b"]["num_hidden_layers"] == 32     # data left untouched


@pytest.mark.parametrize("call, message", [
    (lambda: archs.architecture("llava-v9"), "--random-weights 'llava-v9'"),
    (lambda: archs.architecture("llava-v1.5-7b", llm_layers=33), "--llm-layers=33"),
    (lambda: archs.architecture("llava-v1.5-7b", vision_layers=1), "--vision-layers=1 is too shallow"),
    (lambda: Settings(["freepruner", "magic"], [0.5]), "unknown method 'magic'"),
    (lambda: Settings(["grid"], [0.0]), "--ratios: 0.0"),
    (lambda: Settings(["grid"], [0.5], new_tokens=1), "--new-tokens 1"),
])
def test_bad_inputs_name_the_option_and_the_value(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


def test_random_weight_build_uses_upstream_classes_without_files(monkeypatch, tmp_path):
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from llava_freepruner.tools.bench import model as bench_model

    small = dict(archs.ARCHITECTURES["llava-v1.5-7b"], hidden_size=32, intermediate_size=64,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=100, mm_hidden_size=32)
    monkeypatch.setitem(archs.ARCHITECTURES, "llava-small", small)
    monkeypatch.setattr(archs, "CLIP_VIT_L_14_336", dict(archs.CLIP_VIT_L_14_336, hidden_size=32,
                                                         intermediate_size=64, num_attention_heads=4))
    monkeypatch.chdir(tmp_path)
    bench = bench_model.build_random("llava-small", 2, 3, "cpu", torch.float32)
    assert isinstance(bench.model, LlavaLlamaForCausalLM)
    tower = bench.model.get_vision_tower()
    assert tower.is_loaded and tower.num_patches == 576 and tower.config.num_hidden_layers == 3
    assert bench.model.config.mm_vision_tower == "openai/clip-vit-large-patch14-336"
    assert list(tmp_path.iterdir()) == []
    inputs = bench_model.make_inputs(bench, 1, 20)
    assert inputs.text_tokens == 20 and int((inputs.input_ids == -200).sum()) == 1 and inputs.crops == 1
    with torch.inference_mode():
        out = bench.model.generate(**inputs.generate_kwargs, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                                   pad_token_id=0)
    assert out.shape[0] == 1 and out.shape[1] >= 2


def test_cli_rejects_bad_device_and_layer_flags(checkpoint, capsys):
    assert main(["bench", "--model", checkpoint, "--device", "tpu"]) == 2
    assert "--device 'tpu'" in capsys.readouterr().err
    assert main(["bench", "--model", checkpoint, "--llm-layers", "2", "--device", "cpu"]) == 2
    assert "--random-weights only" in capsys.readouterr().err


@pytest.mark.parametrize("backend, message", [
    ("tensorflow", "--backend 'tensorflow' is not valid: expected one of upstream, transformers"),
    # upstream llava pins transformers 4.37.2, which transformers' LLaVA classes do not support
    ("transformers", "--backend transformers: transformers 4.37.2 is installed"),
])
def test_cli_refuses_a_backend_this_environment_cannot_run(backend, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--backend", backend, "--random-weights", "llava-1.5-7b-hf", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_upstream_and_transformers_names_are_told_apart():
    with pytest.raises(ValueError, match="that is a transformers name"):
        archs.architecture("llava-1.5-7b-hf")
    with pytest.raises(ValueError, match="that is an upstream llava name"):
        archs.hf_architecture("llava-v1.5-7b")
    decoder, llava, vision = archs.hf_architecture("llava-v1.6-vicuna-7b-hf", llm_layers=2)
    upstream, _ = archs.architecture("llava-v1.6-7b", llm_layers=2)
    assert decoder["vocab_size"] == 32064 and decoder["num_hidden_layers"] == 2
    assert all(decoder[k] == upstream[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads"))
    assert llava["image_grid_pinpoints"] == upstream["image_grid_pinpoints"] and "mm_projector_type" not in decoder
