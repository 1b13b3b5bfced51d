import csv

import pytest

from llava_freepruner.tools.evaluation import sweep
from llava_freepruner.tools.evaluation.naming import pruning_tag


def test_plan_and_cell_environment():
    cells = sweep.plan(["none", "freepruner"], [0.5, 0.25], ["pope", "mme"])
    assert [(c.benchmark, c.method, c.ratio) for c in cells] == [
        ("pope", "none", None), ("pope", "freepruner", 0.5), ("pope", "freepruner", 0.25),
        ("mme", "none", None), ("mme", "freepruner", 0.5), ("mme", "freepruner", 0.25)]
    base = {"FREEPRUNER_RATIO": "0.9", "FREEPRUNER_DEVICE": "cpu", "HOME": "/root"}
    env = cells[1].environ(base)
    assert env["FREEPRUNER_RATIO"] == "0.5" and env["FREEPRUNER_DEVICE"] == "cpu"
    assert pruning_tag(env) == "freepruner-r0.5"
    assert pruning_tag(cells[0].environ(base)) == "none"


def test_plan_rejects_bad_ratio():
    with pytest.raises(ValueError, match="ratio 1.5"):
        sweep.plan(["freepruner"], [1.5], ["pope"])


def test_plan_refuses_a_method_that_takes_no_ratio():
    with pytest.raises(ValueError, match="method 'fitprune' takes no ratio.*freepruner\\+fitprune"):
        sweep.plan(["none", "fitprune"], [0.5, 0.25], ["pope"])
    assert [c.method for c in sweep.plan(["freepruner+fitprune", "fastv"], [0.5], ["pope"])] == [
        "freepruner+fitprune", "fastv"]


def test_sweep_command_names_a_bad_plan_without_a_traceback(tmp_path, capsys):
    from llava_freepruner.tools.evaluation.__main__ import main

    out = tmp_path / "out"
    assert main(["sweep", "--methods", "fitprune", "--ratios", "0.5", "--benchmarks", "pope", "--out", str(out),
                 "--model-path", str(tmp_path)]) == 2
    assert "sweep: method 'fitprune' takes no ratio" in capsys.readouterr().err and not out.exists()


def fake_benchmark(fail_keys, calls):
    """A cell runner with a known score curve; the listed cells raise."""
    def run_cell(cell, environ):
        calls.append(cell.key)
        if cell.key in fail_keys:
            raise RuntimeError("data missing: /x/y.json")
        kept = 576 if cell.ratio is None else 576 * cell.ratio
        return {"score": 50 + kept / 576 * 40, "tokens_in": 576, "tokens_kept": kept,
                "tag": pruning_tag(environ), "answers_file": f"/a/{cell.key}.jsonl"}
    return run_cell


def test_failed_cell_is_recorded_sweep_goes_on_and_rerun_skips_done(tmp_path):
    cells = sweep.plan(["none", "freepruner", "random"], [0.5, 0.25], ["pope"])
    failing = {cells[2].key}
    calls, logs = [], []
    records = sweep.run_sweep(cells, tmp_path, fake_benchmark(failing, calls), {}, log=logs.append)
    assert len(calls) == 5
    assert records[cells[2].key]["status"] == "failed"
    assert "data missing: /x/y.json" in records[cells[2].key]["error"]
    assert sum(r["status"] == "ok" for r in records.values()) == 4
    assert any("[3/5]" in line and "FAILED" in line for line in logs)

    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 5
    assert rows[1]["tag"] == "freepruner-r0.5" and float(rows[1]["score"]) == pytest.approx(70.0)
    assert float(rows[1]["tokens_kept"]) == 288.0
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| benchmark | method | ratio |") and len(md) == 2 + 5

    calls.clear()
    records = sweep.run_sweep(cells, tmp_path, fake_benchmark(set(), calls), {}, log=logs.append)
    assert calls == [cells[2].key]  # only the failed cell runs again
    assert all(r["status"] == "ok" for r in records.values())
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == 6


def test_truncated_record_line_reruns_that_cell(tmp_path):
    cells = sweep.plan(["freepruner"], [0.5], ["pope"])
    (tmp_path / "cells.jsonl").write_text('{"key": "pope|freepruner|0.5", "status": "o')
    calls = []
    sweep.run_sweep(cells, tmp_path, fake_benchmark(set(), calls), {}, log=lambda _: None)
    assert calls == [cells[0].key]


def test_plot_is_written(tmp_path):
    cells = sweep.plan(["none", "freepruner"], [0.5, 0.25], ["pope", "mme"])
    records = sweep.run_sweep(cells, tmp_path, fake_benchmark(set(), []), {}, log=lambda _: None)
    png = sweep.plot(list(records.values()), tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep.plot([], tmp_path / "empty.png") is None
