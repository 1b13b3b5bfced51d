"""lmms-eval's own command, unchanged: ``python -m lmms_eval --model llava_hf`` prunes under FREEPRUNER_*.

The checkpoint is a tiny random LlavaForConditionalGeneration written to tmp; the
task (``lmms_task/freepruner_photos.yaml``) reads questions and scikit-image photos
that the test writes next to a copy of it, so nothing comes from the hub.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from llava_freepruner.fixtures.hf_tiny import TinyHF, save  # noqa: E402
from llava_freepruner.hosts import ENV_PREFIXES  # noqa: E402
from llava_freepruner.runtime.stats import read_jsonl  # noqa: E402

TASK = "freepruner_photos"
TASK_FILES = Path(__file__).parent / "lmms_task"
QUESTIONS = {   # photo -> (question, answer)
    "astronaut": ("Who is in the picture?", "astronaut"),
    "coffee": ("What is in the cup?", "coffee"),
    "chelsea": ("What animal is this?", "cat"),
    "rocket": ("What is in the image?", "rocket"),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("lmms_task")
    for name in ("freepruner_photos.yaml", "photos.py"):
        shutil.copy(TASK_FILES / name, folder / name)
    with open(folder / "photos.jsonl", "w", encoding="utf-8") as handle:
        for name, (question, answer) in QUESTIONS.items():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.png")
            handle.write(json.dumps({"image": f"{name}.png", "question": question, "answer": answer}) + "\n")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save(TinyHF(), str(tmp_path_factory.mktemp("tiny_llava_hf")))


def lmms_eval(checkpoint, task_dir, work, **variables):
    """Run the lmms-eval command line in a fresh interpreter, with only ``variables`` of the plugin's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "datasets_cache"), **variables)
    command = [sys.executable, "-m", "lmms_eval", "--model", "llava_hf",
               "--model_args", f"pretrained={checkpoint},device=cpu,device_map=cpu,dtype=float32",
               "--tasks", TASK, "--include_path", str(task_dir), "--batch_size", "1",
               "--output_path", str(work / "results"), "--log_samples"]
    # cwd outside the repository: lmms-eval records the git commit of its working directory
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_llava_hf_keeps_288_of_576_tokens_for_every_question(checkpoint, task_dir, tmp_path):
    stats = tmp_path / "stats.jsonl"
    run = lmms_eval(checkpoint, task_dir, tmp_path, FREEPRUNER_RATIO="0.5", FREEPRUNER_STATS=str(stats))
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "freePruner: freepruner keeping 288 of 576 visual tokens per image." in log
    # llava_hf turns an exception in generate() into an empty answer and goes on
    assert "in generating" not in log, log[-4000:]

    records = read_jsonl(stats)
    assert [(r["tokens_in"], r["tokens_out"]) for r in records] == [(576, 288)] * len(QUESTIONS)

    [results] = list((tmp_path / "results").glob("*/*_results.json"))
    assert "exact_match,none" in json.loads(results.read_text())["results"][TASK]
    [samples] = list((tmp_path / "results").glob(f"*/*_samples_{TASK}.jsonl"))
    answered = read_jsonl(samples)
    assert sorted(s["target"] for s in answered) == sorted(answer for _, answer in QUESTIONS.values())
    assert all(s["token_counts"][0]["output_tokens"] > 0 for s in answered)


def test_a_bad_ratio_stops_lmms_eval_before_any_result(checkpoint, task_dir, tmp_path):
    stats = tmp_path / "stats.jsonl"
    run = lmms_eval(checkpoint, task_dir, tmp_path, FREEPRUNER_RATIO="2", FREEPRUNER_STATS=str(stats))
    assert run.returncode != 0
    assert "FREEPRUNER_RATIO=2.0 is not valid" in run.stderr
    assert not (tmp_path / "results").exists()
    assert not stats.exists()
