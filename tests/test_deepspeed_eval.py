"""Data-parallel eval script: 2 deepspeed ranks on CPU (gloo) against the single-process upstream run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval_helpers import REPO, subprocess_env
from llava_freepruner.tools.evaluation.sharding import read_shard_logs
from llava_freepruner.runtime.stats import read_jsonl

pytest.importorskip("deepspeed")
psutil = pytest.importorskip("psutil")

SCRIPT = REPO / "eval_scripts" / "ds_model_vqa_loader.py"
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner"]
NUM_QUESTIONS = 8
PRUNED = {"FREEPRUNER_DEVICE": "cpu", "FREEPRUNER_RATIO": "0.5"}


@pytest.fixture(scope="module")
def setup(checkpoints, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_eval")
    photos = sorted(p.name for p in photo_dir.iterdir())
    questions = out / "questions.jsonl"
    questions.write_text("".join(
        json.dumps({"question_id": f"q{i}", "image": photos[i % len(photos)], "text": f"What is in image {i}?"}) + "\n"
        for i in range(NUM_QUESTIONS)))
    checkpoint = checkpoints()
    common = ["--model-path", checkpoint, "--question-file", str(questions), "--image-folder", str(photo_dir),
              "--temperature", "0", "--max_new_tokens", "12"]
    reference = out / "upstream.jsonl"
    done = subprocess.run([sys.executable, "-m", "llava.eval.model_vqa_loader", *common, "--answers-file", str(reference)],
                          env=subprocess_env(**PRUNED), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "common": common + ["--num-workers", "0"], "reference": read_jsonl(reference)}


def comparable(answers):
    return [{k: v for k, v in a.items() if k != "answer_id"} for a in answers]


def ds_command(setup, answers_file, ranks=2):
    return [*DEEPSPEED, "--num_gpus", str(ranks), "--master_port", "29533", str(SCRIPT), *setup["common"],
            "--answers-file", str(answers_file)]


def test_two_deepspeed_ranks_equal_single_process_upstream(setup):
    answers, stats = setup["out"] / "ds2.jsonl", setup["out"] / "ds2-stats.jsonl"
    done = subprocess.run(ds_command(setup, answers), env=subprocess_env(**PRUNED, FREEPRUNER_STATS=str(stats)),
                          capture_output=True, text=True, timeout=400, cwd=setup["out"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert comparable(read_jsonl(answers)) == comparable(setup["reference"])
    assert "[rank 0/2] 4 questions to answer" in done.stdout and "[rank 1/2] 4 questions to answer" in done.stdout
    # the plugin pruned on both ranks
    assert [r["tokens_out"] for r in read_jsonl(stats)] == [288] * NUM_QUESTIONS


def _rank_process(launcher: subprocess.Popen, local_rank: int):
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if f"--local_rank={local_rank}" in child.cmdline() and str(SCRIPT) in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_killed_rank_resumes_without_loss_or_duplicates(setup):
    answers = setup["out"] / "killed.jsonl"
    shard_dir = Path(str(answers) + ".shards")
    launcher = subprocess.Popen(ds_command(setup, answers), env=subprocess_env(**PRUNED), cwd=setup["out"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        rank1_log = shard_dir / "rank0001-of-0002.jsonl"
        while not (rank1_log.exists() and rank1_log.read_text().count("\n") >= 1):
            assert time.time() < deadline and launcher.poll() is None, "rank 1 never answered"
            time.sleep(0.05)
        _rank_process(launcher, 1).kill()  # SIGKILL: no clean-up, mid-generation
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    answered_before = len(read_shard_logs(shard_dir))
    assert 1 <= answered_before < NUM_QUESTIONS
    assert not answers.exists()

    # Restart as one plain process: the logs of the 2-rank run are picked up whatever the world size.
    done = subprocess.run([sys.executable, str(SCRIPT), *setup["common"], "--answers-file", str(answers)],
                          env=subprocess_env(**PRUNED), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"[rank 0/1] {NUM_QUESTIONS - answered_before} questions to answer ({answered_before} answered before" \
        in done.stdout
    assert comparable(read_jsonl(answers)) == comparable(setup["reference"])
    indices = [r["index"] for r in read_shard_logs(shard_dir)]
    assert sorted(indices) == list(range(NUM_QUESTIONS))  # each question answered exactly once
