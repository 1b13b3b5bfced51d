"""Paired statistics of the accuracy command: Wilson intervals, McNemar's exact
test, the paired bootstrap, the report's columns and ``accuracy-report``. No model."""

import json
import random

import pytest

from llava_freepruner.tools.accuracy import report
from llava_freepruner.tools.accuracy.significance import DifferentQuestions, mcnemar_exact, paired, wilson


def test_wilson_interval_matches_hand_computed_values():
    # 150/200, z = 1.959964: centre (0.75 + z²/400) / (1 + z²/200) = 0.745290, half-width 0.059629
    low, high = wilson(150, 200)
    assert low == pytest.approx(0.685659, abs=1e-6) and high == pytest.approx(0.804918, abs=1e-6)
    # none right out of 10: 0 .. z² / (10 + z²)
    assert wilson(0, 10) == (0.0, pytest.approx(3.841459 / 13.841459, abs=1e-6))
    assert wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(1 - 3.841459 / 13.841459, abs=1e-6)
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_mcnemar_exact_two_sided_p_values():
    assert mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=1e-4)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10) == 2 * (1 + 12 + 66) / 2 ** 12
    assert mcnemar_exact(0, 6) == 2 / 2 ** 6
    assert mcnemar_exact(7, 7) == mcnemar_exact(1, 1) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert 0.0 <= mcnemar_exact(0, 3000) < 1e-300        # exact tails: no overflow, no float error
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def _answers(count, accuracy, seed):
    rng = random.Random(seed)
    return {str(q): rng.random() < accuracy for q in range(count)}


def test_bootstrap_is_deterministic_holds_the_observed_difference_and_ignores_answer_order():
    cell, reference = _answers(200, 0.75, 1), _answers(200, 0.65, 2)
    first = paired(cell, reference)
    assert paired(cell, reference) == first
    assert paired(dict(reversed(cell.items())), dict(reversed(reference.items()))) == first
    assert first.questions == 200
    assert first.difference == (sum(cell.values()) - sum(reference.values())) / 200
    assert first.difference == (first.cell_only - first.reference_only) / 200
    assert first.low <= first.difference <= first.high and first.low < first.high
    assert first.p == mcnemar_exact(first.cell_only, first.reference_only)
    assert paired(cell, reference, seed=1) != first         # the seed picks the resamples
    assert paired(reference, cell).difference == -first.difference


def test_fewer_discordant_questions_give_a_narrower_interval_and_identical_answers_none():
    # both +10 points on 100 questions: 10 against 0 discordant questions, or 30 against 20
    reference = {str(q): q % 2 == 0 for q in range(100)}
    flip = lambda wrong_to_right, right_to_wrong: {  # noqa: E731
        q: (not right) if (int(q) % 2 == 1 and int(q) < 2 * wrong_to_right) or
        (int(q) % 2 == 0 and int(q) < 2 * right_to_wrong) else right for q, right in reference.items()}
    few, many = paired(flip(10, 0), reference), paired(flip(30, 20), reference)
    assert (few.cell_only, few.reference_only, many.cell_only, many.reference_only) == (10, 0, 30, 20)
    assert few.difference == many.difference == pytest.approx(0.10)
    assert few.high - few.low < many.high - many.low
    assert few.p < many.p
    same = paired(reference, dict(reference))
    assert (same.difference, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)


def test_pairing_refuses_cells_that_answered_other_questions():
    with pytest.raises(DifferentQuestions, match=r"1 only in the first \('3'\), 2 only in the second"):
        paired({"1": True, "2": False, "3": True}, {"1": True, "2": True, "4": False, "5": True})


def _rows_and_answers():
    """none@1, freepruner@0.5, random@0.5 on the same 40 questions; grid@0.5 on 30 of them."""
    answers = {"none@1": _answers(40, 0.9, 3), "freepruner@0.5": _answers(40, 0.75, 4),
               "random@0.5": _answers(40, 0.55, 5), "grid@0.5": _answers(30, 0.6, 6)}
    rows = []
    for name, right in answers.items():
        method, ratio = name.split("@")
        accuracy = sum(right.values()) / len(right)
        rows.append({"method": method, "ratio": float(ratio), "questions": len(right),
                     "accuracy": accuracy, "families": {"count": accuracy},
                     "visual_tokens": 256 * float(ratio), "tokens_from": "stats"})
    return rows, answers


def test_markdown_shows_intervals_and_each_cell_against_the_reference_of_its_ratio():
    rows, answers = _rows_and_answers()
    annotated = report.annotate(rows, answers)
    text = report.markdown({"model": "m", "questions": 40, "question_file": "q.jsonl", "reference": "freepruner"},
                           annotated)
    lines = text.splitlines()
    assert lines[2] == ("| method | ratio | visual tokens | questions | accuracy | 95% CI | Δ vs freepruner "
                        "| Δ 95% CI | McNemar p | count |")
    table = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[4:8]}
    random_vs = paired(answers["random@0.5"], answers["freepruner@0.5"])
    low, high = wilson(sum(answers["random@0.5"].values()), 40)
    assert table["random"][4:9] == [f"{100 * rows[2]['accuracy']:.1f}", f"[{100 * low:.1f}, {100 * high:.1f}]",
                                    f"{100 * random_vs.difference:+.1f}",
                                    f"[{100 * random_vs.low:+.1f}, {100 * random_vs.high:+.1f}]",
                                    f"{random_vs.p:.3f}"]
    assert table["freepruner"][6] == "reference"
    assert table["none"][6] == "—"                         # no freepruner cell at ratio 1
    assert table["grid"][6] == "n/a (different questions)" and table["grid"][3] == "30"
    assert "A difference whose interval excludes 0 is real at 95%." in text
    assert annotated[2]["vs_reference"] == dict(reference="freepruner@0.5", **random_vs.as_dict())
    assert annotated[3]["vs_reference"] == {"reference": "freepruner@0.5", "difference": None,
                                            "note": "different questions"}

    # the unpruned model as the reference: every cell against it; no reference cell: no paired columns
    against_none = report.annotate(rows[:3], answers, "none")
    assert [r["vs_reference"] and r["vs_reference"]["reference"] for r in against_none] == [None, "none@1", "none@1"]
    plain = report.markdown({"model": "m", "questions": 40, "question_file": "q", "reference": "freepruner"},
                            report.annotate(rows[:1], answers))
    assert "| method | ratio | visual tokens | accuracy | 95% CI | count |" in plain and "Δ" not in plain


def test_write_carries_the_numbers_in_results_json_and_draws_error_bars(tmp_path):
    pytest.importorskip("matplotlib")
    rows, answers = _rows_and_answers()
    paths = report.write(str(tmp_path), {"model": "m", "questions": 40, "question_file": "q"}, rows, answers)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["reference"] == "freepruner"
    assert "Wilson" in results["meta"]["statistics"]["accuracy_interval"]
    cells = {report.cell_name(row): row for row in results["cells"]}
    assert cells["random@0.5"]["vs_reference"]["mcnemar_p"] == \
        paired(answers["random@0.5"], answers["freepruner@0.5"]).p
    assert cells["none@1"]["accuracy_interval"] == list(wilson(sum(answers["none@1"].values()), 40))
    assert (tmp_path / "accuracy.png").stat().st_size > 0 and paths[1].endswith("results.md")


def _accuracy_folder(tmp_path, answers, settings=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cells = tmp_path / "out" / "cells"
    cells.mkdir(parents=True)
    for name, right in answers.items():
        (cells / f"{name}.jsonl").write_text("".join(
            json.dumps({"question_id": q, "family": "count", "answer": "a", "prediction": "a" if ok else "b",
                        "correct": ok, "unpruned_tokens": 256, "stats_records": 1}) + "\n" for q, ok in right.items()))
        tokens = 256 * float(name.split("@")[1])
        (cells / f"{name}.stats.jsonl").write_text(json.dumps({"tokens_in": 256, "tokens_out": tokens}) + "\n")
        (cells / f"{name}.settings.json").write_text(json.dumps(settings or {
            "--model": "/abs/model", "--max-new-tokens": 8, "--questions": "/abs/q.jsonl", "--images": "/abs/img",
            "--fitprune-recipe": None}))
    return tmp_path / "out"


def test_accuracy_report_rewrites_the_report_from_the_answer_files_alone(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from llava_freepruner.tools.cli import main

    rows, answers = _rows_and_answers()
    out = _accuracy_folder(tmp_path, answers)
    # the order and spelling of an earlier results.json are kept
    (out / "results.json").write_text(json.dumps({"meta": {"command": "python -m llava_freepruner accuracy ...",
                                                           "model": "toy/model", "question_file": "toy/q.jsonl"},
                                                  "cells": rows}))
    assert main(["accuracy-report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (out / "results.md").read_text().strip()
    assert printed.startswith("Model `toy/model`, 30-40 questions (per cell: the questions column) from `toy/q.jsonl`.")
    results = json.loads((out / "results.json").read_text())
    assert [report.cell_name(row) for row in results["cells"]] == list(answers)
    assert results["cells"] == report.annotate(rows, answers)
    assert results["meta"]["answered_by"] == "python -m llava_freepruner accuracy ..."
    assert results["meta"]["max_new_tokens"] == 8

    (out / "results.json").unlink()         # no results.json: the cells' settings, cells in the grid's order
    assert main(["accuracy-report", "--out", str(out), "--reference", "random"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["model"] == "/abs/model" and results["meta"]["reference"] == "random"
    assert [report.cell_name(row) for row in results["cells"]] == ["none@1", "freepruner@0.5", "random@0.5", "grid@0.5"]
    assert results["cells"][1]["vs_reference"]["reference"] == "random@0.5"


@pytest.mark.parametrize("reference", ["magic", "fastv"])
def test_accuracy_report_refuses_a_reference_outside_the_folder_by_name(tmp_path, capsys, reference):
    from llava_freepruner.tools.cli import main

    out = _accuracy_folder(tmp_path, {"none@1": {"1": True}, "freepruner@0.5": {"1": False}})
    assert main(["accuracy-report", "--out", str(out), "--reference", reference]) == 2
    err = capsys.readouterr().err
    assert f"--reference {reference!r} is not valid: expected one of the methods answered in {out} (" in err
    assert "freepruner" in err and "none" in err and not (out / "results.json").exists()
    assert main(["accuracy-report", "--out", str(tmp_path / "nothing")]) == 2
    assert "no cells folder" in capsys.readouterr().err


def test_accuracy_report_refuses_cells_answered_by_different_models(tmp_path, capsys):
    from llava_freepruner.tools.cli import main

    out = _accuracy_folder(tmp_path, {"none@1": {"1": True}})
    (out / "cells" / "freepruner@0.5.jsonl").write_text(json.dumps(
        {"question_id": "1", "family": "f", "correct": True, "unpruned_tokens": 256}) + "\n")
    (out / "cells" / "freepruner@0.5.settings.json").write_text(json.dumps({"--model": "/other"}))
    assert main(["accuracy-report", "--out", str(out)]) == 2
    assert "different --model values" in capsys.readouterr().err and not (out / "results.md").exists()


def test_accuracy_refuses_an_unknown_reference_before_the_model_loads(tmp_path, capsys):
    from PIL import Image

    from llava_freepruner.tools.cli import main

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 0, "image": "a.png", "text": "t", "answer": "a"}\n')
    args = ["accuracy", "--model", str(tmp_path / "no-model"), "--questions", str(questions),
            "--images", str(tmp_path / "img"), "--methods", "none,freepruner,random", "--ratios", "0.5",
            "--out", str(tmp_path / "out")]
    assert main(args + ["--reference", "magic"]) == 2
    err = capsys.readouterr().err
    assert "--reference 'magic' is not valid: expected one of the methods of the run (none, freepruner, random)" in err
    assert main(args + ["--reference", "dart"]) == 2
    assert "--reference 'dart'" in capsys.readouterr().err
    assert main(args + ["--reference", "Random"]) == 2      # accepted: then the missing model is named
    assert "--model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _seed_runs():
    """Two models' grids on the same 200 questions: freepruner, random and fastv at 0.5,
    freepruner and random at 0.25; random beats freepruner at 0.25 on the second only."""
    from llava_freepruner.tools.accuracy.seeds import Run

    runs = []
    for seed, accuracies in ((0, {"none@1": 0.9, "freepruner@0.5": 0.8, "random@0.5": 0.6, "fastv@0.5": 0.7,
                                  "freepruner@0.25": 0.7, "random@0.25": 0.5}),
                             (1, {"none@1": 0.9, "freepruner@0.5": 0.75, "random@0.5": 0.55, "fastv@0.5": 0.8,
                                  "freepruner@0.25": 0.5, "random@0.25": 0.6})):
        answers = {name: {str(q): q < round(200 * a) for q in range(200)} for name, a in accuracies.items()}
        rows = [{"method": n.split("@")[0], "ratio": float(n.split("@")[1]), "questions": 200,
                 "accuracy": sum(r.values()) / 200, "families": {}, "visual_tokens": 256 * float(n.split("@")[1])}
                for n, r in answers.items()]
        runs.append(Run(f"seed {seed}", rows, answers))
    return runs


def test_seeds_pool_the_paired_difference_over_models_and_check_each_rank():
    from llava_freepruner.tools.accuracy.seeds import compare

    runs = _seed_runs()
    result = compare(runs, "freepruner")
    cells = {c["cell"]: c for c in result["cells"]}
    random_half = cells["random@0.5"]
    assert random_half["accuracy"] == [0.6, 0.55] and random_half["mean"] == pytest.approx(0.575)
    # the mean's interval resamples the questions (per question: the share of models right)
    low, high = random_half["mean_interval"]
    assert low < 0.575 < high and 0.05 < high - low < 0.2
    assert [v["difference"] for v in random_half["vs_reference"]] == [pytest.approx(-0.2), pytest.approx(-0.2)]
    assert random_half["pooled"]["difference"] == pytest.approx(-0.2)
    low, high = random_half["pooled"]["interval"]
    assert low <= -0.2 <= high and high < 0
    assert cells["freepruner@0.5"]["pooled"] is None and cells["none@1"]["pooled"] is None
    assert "rank" not in cells["none@1"]
    # ranked within their kind: at 0.5 freepruner before random in the tower on both, fastv alone in the LLM
    # (though fastv beats freepruner on seed 1); at 0.25 random overtakes freepruner on seed 1
    assert cells["freepruner@0.5"]["rank"] == [1, 1] and cells["freepruner@0.5"]["rank_holds"]
    assert cells["random@0.5"]["rank"] == [2, 2] and cells["fastv@0.5"]["rank"] == [1, 1]
    assert cells["freepruner@0.25"]["rank"] == [1, 2] and not cells["freepruner@0.25"]["rank_holds"]
    # the pooled difference of identical models is that of one, interval included
    same = compare([runs[0], runs[0].__class__("copy", runs[0].rows, runs[0].answers)], "freepruner")
    pooled = next(c for c in same["cells"] if c["cell"] == "fastv@0.5")
    assert pooled["pooled"]["difference"] == pooled["vs_reference"][0]["difference"]
    assert pooled["pooled"]["interval"] == pooled["vs_reference"][0]["interval"]


def test_seeds_verdict_names_the_best_method_per_budget_in_the_tower_and_in_the_llm():
    from llava_freepruner.tools.accuracy.seeds import compare, markdown

    result = compare(_seed_runs(), "freepruner")
    half, quarter = result["verdict"]
    assert (half["ratio"], half["tower"]["method"], half["llm"]["method"]) == (0.5, "freepruner", "fastv")
    assert half["tower"]["best_on_every_run"] and half["llm"]["best_on_every_run"]      # fastv alone in the LLM
    assert half["llm"]["pooled"]["difference"] == pytest.approx(-0.025) and half["llm"]["visual_tokens"] == 128
    # at 0.25 freepruner and random tie on the mean (0.6): the first listed wins, and is not first on seed 1
    assert quarter["tower"]["method"] == "freepruner" and not quarter["tower"]["best_on_every_run"]
    assert quarter["llm"] is None
    text = markdown(result)
    assert "| random | 0.5 | 128 | 60.0 | 55.0 | 57.5 [" in text and "] | -20.0 [" in text
    assert "| 0.25 | freepruner 60.0 at 64 tokens (not first on every model) | reference | — |  |" in text
    assert "| 0.5 | freepruner 77.5 at 128 tokens | reference | fastv 75.0 at 128 tokens | -2.5 [" in text


def test_seeds_per_method_table_shows_each_model_the_mean_and_whether_the_rank_holds():
    from llava_freepruner.tools.accuracy.seeds import by_method, compare, markdown

    result = compare(_seed_runs(), "freepruner")
    text = by_method(result)
    lines = text.splitlines()
    assert lines[0] == "| method | ratio 0.5 | ratio 0.25 |"
    assert lines[2] == "| freepruner | 77.5 (80.0 / 75.0), rank 1 on every model | 60.0 (70.0 / 50.0), rank 1 / 2 |"
    assert lines[3] == "| random | 57.5 (60.0 / 55.0), rank 2 on every model | 55.0 (50.0 / 60.0), rank 2 / 1 |"
    assert lines[4] == "| fastv | 75.0 (70.0 / 80.0), rank 1 on every model |  |"
    assert len(lines) == 7 and "(seed 0 / seed 1 in brackets)" in lines[6]
    assert lines[6].endswith("At ratio 1: none 90.0 (90.0 / 90.0).")
    assert text in markdown(result)


def test_seeds_leave_out_cells_some_model_lacks_or_has_not_finished_and_refuse_a_single_model():
    from llava_freepruner.tools.accuracy.seeds import Run, compare, markdown

    first, second = _seed_runs()
    second = Run(second.label, [r for r in second.rows if r["method"] != "fastv"], second.answers)
    result = compare([first, second], "freepruner")
    assert result["missing"] == ["fastv@0.5"] and all(c["method"] != "fastv" for c in result["cells"])
    # random@0.25 answered 120 of the 200 questions on the second model: left out, not ranked
    answers = dict(second.answers, **{"random@0.25": {str(q): True for q in range(120)}})
    result = compare([first, Run(second.label, second.rows, answers)], "freepruner")
    assert result["missing"] == ["fastv@0.5", "random@0.25"]
    assert [c["cell"] for c in result["cells"] if c["ratio"] == 0.25] == ["freepruner@0.25"]
    assert "Not compared (missing or unfinished on some model): fastv@0.5, random@0.25." in markdown(result)
    with pytest.raises(ValueError, match="comparing models needs at least two"):
        compare([first], "freepruner")


def test_accuracy_seeds_compares_folders_from_their_answer_files(tmp_path, capsys):
    from llava_freepruner.tools.cli import main

    folders = []
    for seed, run in enumerate(_seed_runs()):
        folders.append(_accuracy_folder(tmp_path / f"seed{seed}", run.answers))
    out = tmp_path / "both"
    assert main(["accuracy-seeds", "--run", f"seed 0={folders[0]}", "--run", f"seed 1={folders[1]}",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (out / "seeds.md").read_text().strip()
    assert (out / "seeds.png").read_bytes().startswith(b"\x89PNG")
    saved = json.loads((out / "seeds.json").read_text())
    assert saved["runs"] == ["seed 0", "seed 1"] and saved["reference"] == "freepruner"
    assert saved["command"].startswith("python -m llava_freepruner accuracy-seeds --run 'seed 0=")
    assert {c["cell"] for c in saved["cells"]} == {"none@1", "freepruner@0.5", "random@0.5", "fastv@0.5",
                                                     "freepruner@0.25", "random@0.25"}
    # bad inputs are refused by name and write nothing
    assert main(["accuracy-seeds", "--run", str(folders[0]), "--out", str(tmp_path / "x")]) == 2
    assert "comparing models needs at least two" in capsys.readouterr().err
    assert main(["accuracy-seeds", "--run", str(folders[0]), "--run", str(folders[1]), "--out", str(tmp_path / "x")]) == 2
    assert "labels ['out', 'out'] repeat" in capsys.readouterr().err
    assert main(["accuracy-seeds", "--run", f"a={folders[0]}", "--run", f"b={folders[1]}", "--reference", "divprune",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--reference 'divprune' is not valid: expected one of the methods every run answered" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()
