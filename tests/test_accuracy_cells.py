"""The accuracy command's grid: FitPrune recipes per ratio and how cells are validated."""

import pytest

from llava_freepruner.tools.accuracy.cells import grid, parse_recipes
from llava_freepruner.config import ConfigError


def test_one_recipe_serves_every_ratio_and_a_mapping_serves_each_ratio_its_own():
    assert parse_recipes(None) == {}
    assert parse_recipes("r.json") == {None: "r.json"}
    assert parse_recipes("0.5=r50.json, 0.25=r75.json") == {0.5: "r50.json", 0.25: "r75.json"}
    cells = grid(["fitprune", "freepruner"], [0.5, 0.25], parse_recipes("0.5=r50.json,0.25=r75.json"))
    recipes = {c.name: c.config.fitprune_recipe for c in cells}
    assert recipes["fitprune@0.5"] == "r50.json" and recipes["fitprune@0.25"] == "r75.json"
    assert [c.name for c in cells] == ["fitprune@0.5", "fitprune@0.25", "freepruner@0.5", "freepruner@0.25"]


def test_the_unpruned_model_gets_one_cell_whatever_the_ratios():
    cells = grid(["none", "freepruner"], [0.5, 0.25])
    assert [c.name for c in cells] == ["none@1", "freepruner@0.5", "freepruner@0.25"]
    assert cells[0].ratio == 1.0 and not cells[0].config.prunes
    assert [c.name for c in grid(["freepruner"], [0.5, 1.0])] == ["freepruner@0.5", "freepruner@1"]


def test_fitprune_alone_takes_its_budget_from_the_recipe_of_the_ratio_and_the_rest_from_the_ratio():
    cells = {c.name: c.config for c in grid(["fitprune", "fastv", "freepruner+fitprune"], [0.5],
                                            parse_recipes("r50.json"))}
    assert cells["fitprune@0.5"].ratio is None and cells["fitprune@0.5"].fitprune_recipe == "r50.json"
    assert cells["fastv@0.5"].ratio == cells["freepruner+fitprune@0.5"].ratio == 0.5


def test_a_ratio_without_a_recipe_and_a_bad_mapping_are_refused_by_name():
    with pytest.raises(ConfigError, match="no recipe for ratio 0.11 \\(it has 0.5\\)"):
        grid(["fitprune"], [0.5, 0.11], parse_recipes("0.5=r50.json"))
    with pytest.raises(ConfigError, match="'half=r.json': expected RATIO=FILE"):
        parse_recipes("half=r.json")
    with pytest.raises(ConfigError, match="FITPRUNE_RECIPE is not set"):
        grid(["fitprune"], [0.5])


def test_visual_tokens_of_a_method_inside_the_llm_are_averaged_over_its_layers(tmp_path):
    import json

    from llava_freepruner.tools.accuracy.runner import summarize

    cell = grid(["fastv"], [0.5])[0]
    records = [{"family": "count", "correct": True, "unpruned_tokens": 256},
               {"family": "color", "correct": False, "unpruned_tokens": 256}]
    stats = tmp_path / "fastv@0.5.stats.jsonl"
    stats.write_text("".join(json.dumps({"tokens_out": 256, "llm_visual_alive": alive}) + "\n"
                             for alive in ([256, 256, 128, 128], [256, 256, 64, 64])))
    row = summarize(cell, records, str(stats))
    assert row["visual_tokens"] == (192 + 160) / 2 and row["tokens_from"] == "llm_layer_mean"
    assert row["accuracy"] == 0.5 and row["families"] == {"color": 0.0, "count": 1.0}
    stats.write_text(json.dumps({"tokens_out": 128}) + "\n")
    assert summarize(cell, records, str(stats))["visual_tokens"] == 128


def _question_set(tmp_path, count):
    import json

    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": n, "image": "a.png", "text": f"q{n}", "answer": "a"}) + "\n"
                                 for n in range(count)))
    return questions, tmp_path / "img"


def test_a_resume_with_other_settings_is_refused_by_name_before_the_model_loads(tmp_path, capsys):
    import json
    import os

    from llava_freepruner.tools.cli import main

    questions, images = _question_set(tmp_path, 2)
    (tmp_path / "model").mkdir()        # no checkpoint in it: loading it would fail
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    answers = '{"question_id": "0", "prediction": "a"}\n'
    (cells / "none@1.jsonl").write_text(answers)
    (cells / "none@1.settings.json").write_text(json.dumps({
        "--model": os.path.abspath(tmp_path / "model"), "--max-new-tokens": 8,
        "--questions": os.path.abspath(questions), "--images": os.path.abspath(images), "--fitprune-recipe": None}))
    args = ["accuracy", "--questions", str(questions), "--images", str(images), "--out", str(tmp_path / "out")]

    assert main(args + ["--model", str(tmp_path / "model"), "--max-new-tokens", "16"]) == 2
    assert "cell none@1" in (err := capsys.readouterr().err) and "--max-new-tokens was 8, now 16" in err
    (tmp_path / "other").mkdir()
    assert main(args + ["--model", str(tmp_path / "other")]) == 2
    assert f"--model was {os.path.abspath(tmp_path / 'model')!r}, now {os.path.abspath(tmp_path / 'other')!r}" \
        in capsys.readouterr().err
    (cells / "none@1.settings.json").unlink()       # answers whose settings are unknown
    assert main(args + ["--model", str(tmp_path / "model")]) == 2
    assert "holds answers but not the settings that produced them" in capsys.readouterr().err
    assert (cells / "none@1.jsonl").read_text() == answers and not (tmp_path / "out" / "results.json").exists()


class _Interrupted(Exception):
    pass


class _FakeModel:
    """Answers 'a'; like the plugin, leaves one stats record per question before answering."""

    max_new_tokens = 8

    def __init__(self, stats, fail_at=None):
        self.stats, self.fail_at = stats, fail_at

    def inputs(self, items):
        return items

    def answer(self, items):
        with open(self.stats, "a") as handle:
            handle.writelines('{"tokens_in": 4, "tokens_out": 2}\n' for _ in items)
        if any(item.question_id == self.fail_at for item in items):
            raise _Interrupted
        return ["a"] * len(items)

    def visual_tokens(self, items):
        return [4] * len(items)


@pytest.mark.parametrize("batch_sizes", [(1, 1, 1), (2, 1, 3), (1, 2, 2)])
def test_an_interrupted_cell_resumes_with_one_stats_record_per_question(tmp_path, batch_sizes):
    from llava_freepruner.tools.accuracy import questions as question_file
    from llava_freepruner.tools.accuracy.runner import run_cell
    from llava_freepruner.runtime.stats import read_jsonl

    items = question_file.read(*map(str, _question_set(tmp_path, 5)))
    cell = grid(["freepruner"], [0.5])[0]
    folder = tmp_path / "cells"
    folder.mkdir()
    stats = folder / "freepruner@0.5.stats.jsonl"
    settings = {"--model": "m"}
    for interrupted_at, batch_size in zip(("1", "3"), batch_sizes):      # interrupted twice, then finished
        with pytest.raises(_Interrupted):
            run_cell(_FakeModel(stats, interrupted_at), cell, items, str(folder), settings, lambda: None, batch_size)
    records = run_cell(_FakeModel(stats), cell, items, str(folder), settings, lambda: None, batch_sizes[-1])
    assert [r["question_id"] for r in records] == ["0", "1", "2", "3", "4"]
    assert len(read_jsonl(stats)) == 5


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "eight"])
def test_a_bad_batch_size_is_refused_by_name_with_the_accepted_values(tmp_path, capsys, value):
    from llava_freepruner.tools.cli import main

    questions, images = _question_set(tmp_path, 1)
    with pytest.raises(SystemExit) as stopped:
        main(["accuracy", "--model", str(tmp_path), "--questions", str(questions), "--images", str(images),
              "--batch-size", value, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "--batch-size" in err and "expected a whole number >= 1" in err
    assert not (tmp_path / "out").exists()
