"""Each benchmark driver end to end: upstream entry point, tiny checkpoint, mini data layout."""

import json

import pytest

import eval_playground
from eval_helpers import one_token_checkpoint, subprocess_env
from llava_freepruner.tools.evaluation import benchmarks
from llava_freepruner.tools.evaluation.benchmarks import MissingDataError
from llava_freepruner.tools.evaluation.driver import run_benchmark
from llava_freepruner.runtime.stats import read_jsonl

PRUNED = {"FREEPRUNER_DEVICE": "cpu", "FREEPRUNER_RATIO": "0.5"}


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    return eval_playground.build(tmp_path_factory.mktemp("playground"))


@pytest.fixture(scope="module")
def fast_checkpoint(checkpoints, tmp_path_factory):
    return one_token_checkpoint(checkpoints(), tmp_path_factory.mktemp("fast"))


def quiet(_):
    pass


@pytest.mark.parametrize("name", sorted(benchmarks.BENCHMARKS))
def test_benchmark_end_to_end(name, playground, fast_checkpoint):
    bench = benchmarks.get(name)
    result = run_benchmark(name, fast_checkpoint, playground, limit=2, environ=subprocess_env(**PRUNED), log=quiet)
    questions = benchmarks.load_questions(playground / bench.question_file)[:2]
    assert result.answers_file.name == f"{fast_checkpoint.rsplit('/', 1)[-1]}__freepruner-r0.5.jsonl"
    assert result.answers_file.parent == playground / bench.answers_dir
    answers = read_jsonl(result.answers_file)
    assert [a["question_id"] for a in answers] == [benchmarks.question_id(q) for q in questions]
    images = 1 if name == "sqa" else 2  # the first ScienceQA problem has no image
    assert result.tokens == {"images": images, "tokens_in": 576.0, "tokens_out": 288.0}
    saved = json.loads((result.answers_file.parent / f"{result.run_name}.score.json").read_text())
    assert saved["score"] == result.scores["score"]
    if name == "vqav2":
        upload = json.loads(open(result.scores["upload_file"]).read())
        assert [row["question_id"] for row in upload] == [0, 1, 2, 3]
        assert upload[2]["answer"] == "" and upload[3]["answer"] == ""
    else:
        assert 0.0 <= result.scores["score"] <= (2800.0 if name == "mme" else 100.0)
    if name == "mmbench":
        assert open(result.scores["upload_file"], "rb").read(2) == b"PK"  # an xlsx (zip) file


def test_rerun_reuses_answers_and_ratio_changes_the_file(playground, fast_checkpoint):
    first = run_benchmark("gqa", fast_checkpoint, playground, limit=2, environ=subprocess_env(**PRUNED), log=quiet)
    again = run_benchmark("gqa", fast_checkpoint, playground, limit=2, environ=subprocess_env(**PRUNED), log=quiet)
    assert again.inference_s is None and again.answers_file == first.answers_file
    env = subprocess_env(FREEPRUNER_DEVICE="cpu", FREEPRUNER_RATIO="0.25")
    other = run_benchmark("gqa", fast_checkpoint, playground, limit=2, environ=env, log=quiet, score=False)
    assert other.answers_file != first.answers_file and first.answers_file.exists()
    assert other.tokens["tokens_out"] == 144.0


def test_fewer_questions_than_chunks(playground, fast_checkpoint):
    logs = []
    result = run_benchmark("pope", fast_checkpoint, playground, limit=2, chunks=5, force=True,
                           environ=subprocess_env(**PRUNED), log=logs.append)
    assert sum("chunk" in line for line in logs) == 2  # upstream can serve only 2 non-empty chunks
    assert [a["question_id"] for a in read_jsonl(result.answers_file)] == [0, 1]


def test_missing_data_names_the_file(tmp_path):
    (tmp_path / "gqa").mkdir()
    with pytest.raises(MissingDataError) as err:
        run_benchmark("gqa", "/m/llava-x", tmp_path, log=quiet)
    message = str(err.value)
    assert str(tmp_path / "gqa/llava_gqa_testdev_balanced.jsonl") in message
    assert str(tmp_path / "gqa/data/testdev_balanced_questions.json") in message


def test_unknown_benchmark_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown benchmark 'coco'; accepted: gqa, vqav2"):
        benchmarks.get("coco")


def test_sweep_command_writes_table_and_plot(playground, fast_checkpoint, tmp_path, monkeypatch, capsys):
    from llava_freepruner.tools.evaluation.__main__ import main

    for name, value in subprocess_env(FREEPRUNER_DEVICE="cpu").items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "sweep"
    argv = ["sweep", "--model-path", fast_checkpoint, "--root", str(playground), "--limit", "2", "--gpus", "",
            "--methods", "none,freepruner", "--ratios", "0.25", "--benchmarks", "pope", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2] pope method=none" in printed and "[2/2] pope method=freepruner ratio=0.25" in printed
    rows = (out / "results.md").read_text().splitlines()[2:]
    assert len(rows) == 2 and "| freepruner-r0.25 | ok |" in rows[1] and "| 144.00 |" in rows[1]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 2
