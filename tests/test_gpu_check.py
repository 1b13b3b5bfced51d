"""The one-command GPU check, proven end to end in its CPU smoke mode."""

import json
import subprocess
import sys

import pytest

from llava_freepruner.config import Config
from llava_freepruner.tools.bench.runner import fitprune_recipe, known_methods, runs_at
from llava_freepruner.tools.gpucheck import driver, plan
from llava_freepruner.runtime.methods import REGISTRY

from eval_helpers import REPO, subprocess_env

REQUIRED = ("selection", "bench-v1.5", "batch-2", "fitprune-fit", "anyres-v1.6")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    done = subprocess.run(["bash", "eval_scripts/gpu_check.sh", "--cpu-smoke", str(out)], cwd=REPO,
                          env=subprocess_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=1000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    return results, {s["name"]: s for s in results["sections"]}, (out / "gpu.md").read_text()


def test_smoke_runs_every_section_it_can(smoke):
    results, sections, _ = smoke
    assert results["mode"] == "cpu-smoke" and results["elapsed_s"] < results["budget_s"]
    assert list(sections) == [s.name for s in plan.sections(plan.CPU_SMOKE, "out", "", None)]
    for name in REQUIRED:
        assert sections[name]["status"] == "ok", sections[name]
    for name in set(sections) - set(REQUIRED):      # features this version's bench may lack
        assert sections[name]["status"] in ("ok", "skipped"), sections[name]


def test_bench_rows_cover_the_registry_and_every_ratio(smoke):
    _, sections, _ = smoke
    records = sections["bench-v1.5"]["result"]["records"]
    ratios = [1.0, 0.5, 0.25, 0.11]
    assert set(REGISTRY) <= set(known_methods())
    # methods that read the instruction need a CLIP text tower, which random weights lack
    text_free = [m for m in known_methods() if m not in REGISTRY or not REGISTRY[m].needs_instruction]
    expected = {(m, r) for r in ratios for m in ["oracle", *text_free] if runs_at(m, r)}
    assert {(r["method"], r["ratio"]) for r in records} == expected
    assert not [r for r in records if "error" in r]
    for r in records:
        if r["method"] in REGISTRY or r["method"] == "oracle":
            assert r["visual_tokens"] == Config(ratio=r["ratio"]).budget(576)
        elif r["ratio"] < 1.0:                    # LLM-side: fewer tokens in later layers
            assert r["mean_layer_visual_tokens"] < r["visual_tokens"] == 576
    batch = sections["batch-2"]["result"]
    assert batch["meta"]["batch_sizes"] == list(plan.CPU_SMOKE.batches) == [2]
    assert {r["batch_size"] for r in batch["records"]} == {2}
    anyres = {(r["method"], r["ratio"]): r for r in sections["anyres-v1.6"]["result"]["records"]}
    assert anyres[("oracle", 1.0)]["visual_tokens"] > 2000 > anyres[("freepruner", 0.5)]["visual_tokens"]


def test_selection_checks_and_fit_results(smoke):
    _, sections, _ = smoke
    checks = sections["selection"]["result"]["checks"]
    text_free = {m for m in REGISTRY if not REGISTRY[m].needs_instruction}
    assert {c["method"] for c in checks} == text_free and len(checks) == 2 * len(text_free)
    assert all(c["passed"] for c in checks)
    fit = sections["fitprune-fit"]["result"]
    assert fit["samples"] == plan.CPU_SMOKE.fit_samples and fit["layers"] == 32
    assert fit["achieved_reduction"] >= fit["target_reduction"] and fit["fit_s"] > 0


def test_markdown_names_the_machine_and_holds_the_tables(smoke):
    results, sections, md = smoke
    assert md.startswith("# GPU check") and f"Machine: {results['machine']['device_name']}" in md
    assert "| section | status | seconds |" in md
    for name in REQUIRED:
        assert f"| {name} | ok |" in md
    assert "| freepruner | 0.5 | 1 | 288 |" in md and "| freepruner | 0.11 | 1 | 63 |" in md
    assert "| freepruner | 0.5 | 2 | 288 |" in md
    assert "| ratio 1.0 identical to unpatched | freepruner | pass |" in md
    assert "images/s (batch / TTFT)" in md and "FitPrune recipe" in md
    assert "transformers (upstream llava) 4.37.2" in md


def test_fitprune_rows_use_the_nearest_official_recipe():
    assert [fitprune_recipe(r) for r in (0.5, 0.25, 0.11, 0.4)] == [
        "llava-v1.5-7b@50", "llava-v1.5-7b@70", "llava-v1.5-7b@90", "llava-v1.5-7b@60"]
    assert not runs_at("fitprune", 1.0) and runs_at("none", 1.0) and not runs_at("none", 0.5)


def _script_section(name, code):
    return plan.Section(name, name, plan.CHECKS, plan.UPSTREAM, ["-c", code])


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    write = ("import json, os, sys; d = os.path.join(sys.argv[1], 'ok'); os.makedirs(d); "
             "json.dump({'checks': []}, open(os.path.join(d, 'checks.json'), 'w'))")
    sections = [_script_section("broken", "raise SystemExit('no luck here')"),
                plan.Section("ok", "ok", plan.CHECKS, plan.UPSTREAM, ["-c", write, str(tmp_path)]),
                _script_section("slow", "import time; time.sleep(60)"),
                _script_section("late", "pass")]
    monkeypatch.setattr(plan, "sections", lambda *args: sections)
    profile = plan.Profile(**dict(plan.CPU_SMOKE.__dict__, budget_s=12, min_start_s=2))
    check = driver.Check(profile, str(tmp_path), sys.executable, None, driver.time.time(), "test")
    (tmp_path / "logs").mkdir()
    assert check.run() == 1
    status = {s["name"]: s for s in json.loads((tmp_path / "results.json").read_text())["sections"]}
    assert status["broken"]["status"] == "failed" and "no luck here" in status["broken"]["error"]
    assert status["ok"]["status"] == "ok" and status["ok"]["result"] == {"checks": []}
    assert status["slow"]["status"] == "timed out" and status["slow"]["elapsed_s"] < 30
    assert status["late"]["status"] == "not started" and "time budget" in status["late"]["reason"]
    assert "| broken | failed: exit code 1 |" in (tmp_path / "gpu.md").read_text()


def _writer(name, root):
    """A section that leaves an empty checks.json in its folder."""
    code = (f"import json, os, sys; d = os.path.join(sys.argv[1], {name!r}); os.makedirs(d, exist_ok=True); "
            "json.dump({'checks': []}, open(os.path.join(d, 'checks.json'), 'w'))")
    return plan.Section(name, f"section {name}", plan.CHECKS, plan.UPSTREAM, ["-c", code, str(root)])


def test_sections_are_chosen_by_name_or_by_what_is_left():
    every = [_writer(n, "x") for n in ("a", "b", "c", "d")]
    assert [s.name for s in plan.choose(every, ["c", "a"], None)] == ["a", "c"]     # plan order
    assert [s.name for s in plan.choose(every, None, None)] == ["a", "b", "c", "d"]
    previous = {"a": "ok", "b": "not started", "c": "failed"}       # d never ran
    assert [s.name for s in plan.choose(every, None, previous)] == ["b", "d"]
    with pytest.raises(ValueError, match="unknown section.*zz; expected some of a, b, c, d"):
        plan.choose(every, ["a", "zz"], None)
    listing = plan.listing(plan.sections(plan.GPU, "out", "", None)).splitlines()
    assert len(listing) == len(plan.sections(plan.GPU, "out", "", None)) + 1
    assert listing[0].startswith("selection") and "min" in listing[0] and "in all" in listing[-1]
    names = [s.name for s in plan.sections(plan.GPU, "out", "", None)]
    for never_ran in ("transformers", "video-llava-7b-hf", "llava-next-video-7b-hf", "quant-4bit", "batch-32"):
        assert never_ran in names
    # every GPU section fits a 7-minute call with its install
    assert all(s.minutes * 60 <= plan.GPU.budget_s - plan.GPU.min_start_s for s in plan.sections(plan.GPU, "o", "", None))


def test_calls_merge_into_one_results_file_and_resume_runs_what_is_left(tmp_path, monkeypatch):
    every = [_writer(n, tmp_path) for n in ("a", "b", "c")]
    monkeypatch.setattr(plan, "sections", lambda *args: every)
    monkeypatch.setattr(plan, "MINUTES", {"a": 0, "b": 10, "c": 0})       # b does not fit the first call
    profile = plan.Profile(**dict(plan.CPU_SMOKE.__dict__, budget_s=60, min_start_s=1, estimates=True))
    (tmp_path / "logs").mkdir()

    def call(names=None, resume=False):
        previous = driver.previous_results(str(tmp_path), profile.mode) if names or resume else None
        check = driver.Check(profile, str(tmp_path), sys.executable, None, driver.time.time(), f"call {names} {resume}",
                             previous)
        code = check.run(names, resume)
        return code, json.loads((tmp_path / "results.json").read_text())

    code, first = call(["c"])
    assert code == 0 and [(s["name"], s["status"]) for s in first["sections"]] == [
        ("a", "not run yet"), ("b", "not run yet"), ("c", "ok")]
    code, second = call(resume=True)
    status = {s["name"]: s for s in second["sections"]}
    assert status["a"]["status"] == "ok" and status["b"]["status"] == "not started"
    assert "needs about 600 s" in status["b"]["reason"] and status["c"] == first["sections"][2]   # c kept as it was
    monkeypatch.setattr(plan, "MINUTES", {"a": 0, "b": 0, "c": 0})
    code, third = call(resume=True)
    assert code == 0 and [s["status"] for s in third["sections"]] == ["ok", "ok", "ok"]
    assert [c["sections"] for c in third["calls"]] == [["c"], ["a", "b"], ["b"]]
    md = (tmp_path / "gpu.md").read_text()
    assert md.count("\n- ") == 3 and "| section | status | seconds | ran |" in md and md.count("## section ") == 3
    with pytest.raises(ValueError, match="holds a 'cpu-smoke' run, not 'gpu'"):
        driver.previous_results(str(tmp_path), "gpu")


def test_bad_usage_is_refused_before_anything_is_written(tmp_path):
    for argv in ([], ["--cpu-smoke"], ["a", "b"], ["--gpu", "x"], ["--sections"], ["--resume", "--sections", "a", "x"]):
        done = subprocess.run(["bash", "eval_scripts/gpu_check.sh", *argv], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 2 and "usage: bash eval_scripts/gpu_check.sh" in done.stderr
    done = subprocess.run(["bash", "eval_scripts/gpu_check.sh", str(tmp_path / "out")], cwd=REPO,
                          env=subprocess_env(GPU_CHECK_WHEELS=str(tmp_path / "none")), capture_output=True, text=True)
    assert done.returncode == 2 and "gpu_wheels.sh" in done.stderr and not (tmp_path / "out").exists()
    done = subprocess.run(["bash", "eval_scripts/gpu_check.sh", "--cpu-smoke", "--sections", "nope", str(tmp_path / "out")],
                          cwd=REPO, env=subprocess_env(PYTHON=sys.executable), capture_output=True, text=True)
    assert done.returncode == 2 and "--sections 'nope': unknown section(s) nope" in done.stderr
    assert not (tmp_path / "out").exists()
    done = subprocess.run(["bash", "eval_scripts/gpu_check.sh", "--list-sections"], cwd=REPO,
                          env=subprocess_env(PYTHON=sys.executable), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.splitlines()[0].split()[:2] == ["selection", "~0.5"]
