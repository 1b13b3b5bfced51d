"""lmms-eval's own command, unchanged, on videos: ``python -m lmms_eval --model llava_hf
--force_simple`` prunes a tiny LLaVA-OneVision checkpoint's video tokens under FREEPRUNER_*.

The task (``lmms_video_task/freepruner_clips.yaml``) asks about Debian's opencv-doc clips,
linked next to a copy of it; lmms-eval decodes them itself (decord, 32 frames each).
``--force_simple`` picks lmms-eval's plain ``llava_hf`` class: the chat class that
``--model llava_hf`` resolves to by default passes ``images=[]`` with the video, which
LlavaOnevisionImageProcessor rejects (IndexError). Video-LLaVA and LLaVA-NeXT-Video
checkpoints have no lmms-eval entry that runs on transformers 5.x; the last test pins why.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("decord")

from llava_freepruner.hosts import ENV_PREFIXES  # noqa: E402
from llava_freepruner.runtime.stats import read_jsonl  # noqa: E402

TASK = "freepruner_clips"
TASK_FILES = Path(__file__).parent / "lmms_video_task"
QUESTIONS = {   # clip -> (question, answer)
    "vtest.avi": ("What are the people doing?", "walking"),
    "Megamind.avi": ("Is this a cartoon?", "yes"),
    "tree.avi": ("What is in the video?", "tree"),
}
# llava_hf's default max_frames_num: 32 frames x 196 cells + 1 newline; ratio 0.5 keeps 98 per frame
TOKENS_IN, TOKENS_OUT = 32 * 196 + 1, 32 * 98 + 1


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, clip_folder):
    folder = tmp_path_factory.mktemp("lmms_video_task")
    for name in ("freepruner_clips.yaml", "clips.py"):
        shutil.copy(TASK_FILES / name, folder / name)
    with open(folder / "clips.jsonl", "w", encoding="utf-8") as handle:
        for clip, (question, answer) in QUESTIONS.items():
            os.symlink(os.path.join(clip_folder, clip), folder / clip)
            handle.write(json.dumps({"video": clip, "question": question, "answer": answer}) + "\n")
    return folder


def lmms_eval(model, checkpoint, task_dir, work, model_args="", **variables):
    """Run the lmms-eval command line in a fresh interpreter, with only ``variables`` of the plugin's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "datasets_cache"), **variables)
    command = [sys.executable, "-m", "lmms_eval", *model, "--model_args", f"pretrained={checkpoint},{model_args}",
               "--tasks", TASK, "--include_path", str(task_dir), "--batch_size", "1",
               "--output_path", str(work / "results"), "--log_samples"]
    # cwd outside the repository: lmms-eval records the git commit of its working directory
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)


LLAVA_HF = ["--model", "llava_hf", "--force_simple"]
ON_CPU = "device=cpu,device_map=cpu,dtype=float32"


def test_llava_hf_keeps_about_half_of_every_videos_tokens(checkpoint, task_dir, tmp_path):
    stats = tmp_path / "stats.jsonl"
    run = lmms_eval(LLAVA_HF, checkpoint("llava_onevision"), task_dir, tmp_path, ON_CPU,
                    FREEPRUNER_RATIO="0.5", FREEPRUNER_STATS=str(stats))
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "freePruner: freepruner keeping 98 of 196 visual tokens per video frame (frame mode)." in log
    # lmms-eval logs an exception during the evaluation and still exits 0; llava_hf turns one in
    # generate() into an empty answer
    assert "Error during evaluation" not in log and "in generating" not in log, log[-4000:]

    records = read_jsonl(stats)
    assert [(r["kind"], r["frames"], r["tokens_in"], r["tokens_out"]) for r in records] == \
        [("video", 32, TOKENS_IN, TOKENS_OUT)] * len(QUESTIONS)
    assert all(0.45 <= r["tokens_out"] / r["tokens_in"] <= 0.56 for r in records)

    [results] = list((tmp_path / "results").glob("*/*_results.json"))
    assert "exact_match,none" in json.loads(results.read_text())["results"][TASK]
    [samples] = list((tmp_path / "results").glob(f"*/*_samples_{TASK}.jsonl"))
    answered = read_jsonl(samples)
    assert sorted(s["target"] for s in answered) == sorted(answer for _, answer in QUESTIONS.values())
    assert all(s["filtered_resps"] for s in answered)


def test_a_bad_ratio_stops_lmms_eval_before_any_result(checkpoint, task_dir, tmp_path):
    stats = tmp_path / "stats.jsonl"
    run = lmms_eval(LLAVA_HF, checkpoint("llava_onevision"), task_dir, tmp_path, ON_CPU,
                    FREEPRUNER_RATIO="2", FREEPRUNER_STATS=str(stats))
    assert run.returncode != 0
    assert "FREEPRUNER_RATIO=2.0 is not valid" in run.stderr
    assert not (tmp_path / "results").exists()
    assert not stats.exists()


# lmms-eval 0.7.3's entries for the other two video classes fail inside lmms-eval, before any
# video reaches the model: with no hub access and no GPU, nothing else can run them here.
LMMS_EVAL_FAILURES = {
    # models/simple/video_llava.py:182 calls read_video(path, 8); read_video's num_frm is keyword-only
    "video_llava": (["--model", "video_llava"], "device=cpu,device_map=auto",
                    "TypeError: read_video() takes 1 positional argument but 2 were given"),
    # models/simple/llava_hf.py:96: model_map has llava, llava_next and llava_onevision only
    "llava_next_video": (LLAVA_HF, ON_CPU, "KeyError: 'llava_next_video'"),
}


@pytest.mark.parametrize("kind", sorted(LMMS_EVAL_FAILURES))
def test_lmms_evals_own_entries_for_the_other_video_classes_still_fail(kind, checkpoint, task_dir, tmp_path):
    """When this fails, lmms-eval runs the class: test it like llava_hf above and update the README."""
    model, model_args, error = LMMS_EVAL_FAILURES[kind]
    stats = tmp_path / "stats.jsonl"
    run = lmms_eval(model, checkpoint(kind), task_dir, tmp_path, model_args,
                    FREEPRUNER_RATIO="0.5", FREEPRUNER_STATS=str(stats))
    assert error in run.stdout + run.stderr, (run.stdout + run.stderr)[-4000:]
    assert not list(tmp_path.glob("results/*/*_results.json"))
    assert not stats.exists() or not read_jsonl(stats)
