"""The GPU check's Qwen-VL section, in its CPU smoke mode, where the transformers backend runs.

tests/test_gpu_check.py runs the whole smoke in the upstream environment, whose
transformers 4.37.2 has no Qwen-VL classes: there this section is skipped. Here it runs
alone (``--sections``) with the interpreter's own transformers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from llava_freepruner.tools.gpucheck import plan

REPO = Path(__file__).resolve().parents[2]


def test_the_qwen_section_times_freepruner_and_visionzip_at_ratios_one_and_half(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    done = subprocess.run([sys.executable, "-m", "llava_freepruner.tools.gpucheck", "--cpu-smoke", "--sections",
                           plan.QWEN_SECTION, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    sections = {s["name"]: s for s in json.loads((out / "results.json").read_text())["sections"]}
    section = sections[plan.QWEN_SECTION]
    assert section["status"] == "ok", section
    rows = {(r["method"], r["ratio"]): r for r in section["result"]["records"]}
    assert sorted(rows) == sorted([("none", 1.0)] + [(m, r) for m in ("oracle", "freepruner", "visionzip")
                                                     for r in (1.0, 0.5)])
    for (method, ratio), r in rows.items():
        assert r["visual_tokens"] == (256 if ratio == 1.0 else 128), (method, ratio)
    meta = section["result"]["meta"]
    assert (meta["model"], meta["llm_layers"], meta["vision_layers"]) == ("tiny-qwen2.5-vl", 2, 4)
    assert all(s["status"] == "not run yet" for name, s in sections.items() if name != plan.QWEN_SECTION)
    md = (out / "gpu.md").read_text()
    assert f"| {plan.QWEN_SECTION} | ok |" in md and "| freepruner | 0.5 | 1 | 128 |" in md


def test_on_a_gpu_the_qwen_section_runs_the_published_depth_in_bfloat16():
    [section] = [s for s in plan.sections(plan.GPU, "out", "qwen2.5-vl-7b", "5.25.0") if s.name == plan.QWEN_SECTION]
    args = section.args
    assert args[args.index("--random-weights") + 1] == "qwen2.5-vl-7b"
    assert "--llm-layers" not in args and "--vision-layers" not in args
    assert args[args.index("--dtype") + 1] == "bfloat16" and args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--methods") + 1] == "none,freepruner,visionzip"
    assert args[args.index("--ratios") + 1] == "1.0,0.5"
    assert section.minutes * 60 <= plan.GPU.budget_s - plan.GPU.min_start_s
    # a bench without the Qwen rows, or a machine whose transformers cannot serve the backend: skipped, with why
    [old] = [s for s in plan.sections(plan.GPU, "out", "", "5.25.0") if s.name == plan.QWEN_SECTION]
    assert old.args is None and "bench --help has no qwen2.5-vl-7b" in old.skipped
    [host] = [s for s in plan.sections(plan.GPU, "out", "qwen2.5-vl-7b", "4.37.2") if s.name == plan.QWEN_SECTION]
    assert host.args is None and host.skipped.startswith("not available here")
