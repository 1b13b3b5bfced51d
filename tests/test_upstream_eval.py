"""The unchanged upstream entry point, in fresh interpreters: the plugin
activates only through its installed import hook and the environment."""

import os

import pytest

from conftest import run_upstream
from llava_freepruner.runtime.stats import read_jsonl
from llava_freepruner.fixtures.tiny import TinySpec

CPU = {"FREEPRUNER_DEVICE": "cpu"}


def vqa(checkpoint, question_file, photo_dir, out_dir, env_vars, name):
    answers = out_dir / f"{name}.jsonl"
    stats = out_dir / f"{name}-stats.jsonl"
    result = run_upstream(
        "llava.eval.model_vqa_loader",
        ["--model-path", checkpoint, "--question-file", question_file, "--image-folder", photo_dir,
         "--answers-file", answers, "--temperature", "0", "--max_new_tokens", "6"],
        {**env_vars, "FREEPRUNER_STATS": str(stats)} if env_vars else {}, cwd=out_dir,
    )
    return result, answers, stats


@pytest.fixture(scope="module")
def v15_runs(checkpoints, question_file, photo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("v15")
    checkpoint = checkpoints()
    return {
        name: vqa(checkpoint, question_file, photo_dir, out, env, name)
        for name, env in {
            "plain": CPU,
            "ratio1": {**CPU, "FREEPRUNER_RATIO": "1.0"},
            "ratio05": {**CPU, "FREEPRUNER_RATIO": "0.5"},
        }.items()
    }


def test_half_ratio_keeps_288_of_576_per_image(v15_runs):
    result, answers, stats = v15_runs["ratio05"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "freePruner: freepruner keeping 288 of 576 visual tokens per image." in result.stderr
    records = read_jsonl(stats)
    assert len(records) == 4 and all(r["tokens_in"] == 576 and r["tokens_out"] == 288 for r in records)
    assert all(r["llm_prefill_ms"] > 0 for r in records)
    assert len(read_jsonl(answers)) == 4


def test_ratio_one_answers_equal_unpruned(v15_runs):
    plain, ratio1 = v15_runs["plain"], v15_runs["ratio1"]
    assert plain[0].returncode == 0 and ratio1[0].returncode == 0, plain[0].stderr[-2000:] + ratio1[0].stderr[-2000:]
    texts = [[a["text"] for a in read_jsonl(run[1])] for run in (plain, ratio1)]
    assert texts[0] == texts[1] and len(texts[0]) == 4
    assert [r["tokens_out"] for r in read_jsonl(ratio1[2])] == [576] * 4


@pytest.mark.parametrize("env, message", [
    ({"FREEPRUNER_RATIO": "1.5"}, "FREEPRUNER_RATIO=1.5 is not valid"),
    ({"FREEPRUNER_RATIOO": "0.5"}, "Did you mean FREEPRUNER_RATIO?"),
    ({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_TOKENS": "9"}, "only one"),
])
def test_bad_variable_stops_before_inference(checkpoints, question_file, photo_dir, tmp_path, env, message):
    result, answers, _ = vqa(checkpoints(), question_file, photo_dir, tmp_path, {**CPU, **env}, "bad")
    assert result.returncode != 0
    assert message in result.stderr
    assert not answers.exists()


def test_no_variable_no_plugin(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    code = "import sys, llava; print('llava_freepruner' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()[-1] == "False"
    env["FREEPRUNER_RATIO"] = "0.5"
    code = "import llava, llava_freepruner; print(llava_freepruner.is_applied())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()[-1] == "True"


def test_llava_next_checkpoint_through_upstream_loader(checkpoints, question_file, photo_dir, tmp_path):
    checkpoint = checkpoints(TinySpec(anyres=True))
    result, answers, stats = vqa(checkpoint, question_file, photo_dir, tmp_path,
                                 {**CPU, "FREEPRUNER_RATIO": "0.5"}, "next")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per anyres crop" in result.stderr
    records = read_jsonl(stats)
    assert len(records) == 4
    for record in records:
        assert record["tokens_in"] > 2 * 576 and 0.45 <= record["tokens_out"] / record["tokens_in"] <= 0.56
