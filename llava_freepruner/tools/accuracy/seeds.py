"""One accuracy grid answered by several models (e.g. the toy trained with different
seeds), side by side: each cell's accuracy per model and their mean, its paired
difference against the reference method per model and pooled over the models, its
rank among the methods of its ratio per model, and the best method per budget.

Pure Python over the rows and answers of :func:`.summary.load`; no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from ...config import LLM_METHODS
from . import report, significance
from .report import cell_name, points, reference_cells, signed_interval
from .significance import DifferentQuestions, bootstrap, paired


@dataclass
class Run:
    """One model's answered grid: ``rows`` and ``answers`` as :func:`.summary.load` gives them."""

    label: str
    rows: List[dict]
    answers: Mapping[str, Mapping[str, bool]]


def _kind(method: str) -> str:
    return "llm" if method in LLM_METHODS else "tower"


def _ranks(accuracies: Mapping[str, float]) -> Dict[str, int]:
    """Method -> 1 + how many methods scored strictly higher (ties share a rank)."""
    return {m: 1 + sum(other > a for other in accuracies.values()) for m, a in accuracies.items()}


def _pooled(runs: Sequence[Run], cell: str, reference: str) -> Optional[dict]:
    """``cell`` minus ``reference`` averaged over the runs question by question, with
    the bootstrap interval of that mean (the questions resampled together, so a
    question's answers from every model stay paired); None unless every run answered
    the same question ids in both cells."""
    ids = set(runs[0].answers[cell])
    if any(set(run.answers[name]) != ids for run in runs for name in (cell, reference)):
        return None
    scores = [sum(int(run.answers[cell][q]) - int(run.answers[reference][q]) for run in runs) / len(runs)
              for q in sorted(ids)]
    low, high = bootstrap(scores)
    return {"difference": sum(scores) / len(scores), "interval": [low, high]}


def _finished(runs: Sequence[Run], by_run: Sequence[Mapping[str, dict]]) -> List[str]:
    """The cells every run answered on every question any cell of any run answered, in
    the first run's order. An unfinished cell is left out: its accuracy on fewer
    questions would enter the means and ranks beside cells measured on all of them."""
    questions = {q for run in runs for answers in run.answers.values() for q in answers}
    return [name for name in by_run[0]
            if all(name in cells and set(run.answers.get(name, ())) == questions for run, cells in zip(runs, by_run))]


def _mean_interval(runs: Sequence[Run], cell: str) -> List[float]:
    """Bootstrap interval of the accuracy averaged over the runs: per question the share
    of the runs that answered it right, the questions resampled."""
    questions = sorted(runs[0].answers[cell])
    return list(bootstrap([sum(bool(run.answers[cell][q]) for run in runs) / len(runs) for q in questions]))


def compare(runs: Sequence[Run], reference: str) -> dict:
    """The cells every run answered on every question (:func:`_finished`), each with
    ``accuracy`` (per run), ``mean`` with its ``mean_interval`` (:func:`_mean_interval`),
    ``vs_reference`` (per run: :meth:`.significance.Paired.as_dict` or None), ``pooled``
    (see :func:`_pooled`; None for the reference's own cells), and, below ratio 1,
    ``rank`` (per run, among the methods of its kind, tower or LLM, at that ratio) and
    ``rank_holds``; ``missing``: the other cell names, which some run lacks or has not
    finished; ``verdict``: :func:`verdict`."""
    if len(runs) < 2:
        raise ValueError(f"{len(runs)} run given: comparing models needs at least two")
    by_run = [{cell_name(row): row for row in run.rows} for run in runs]
    shared = _finished(runs, by_run)
    missing = sorted({name for cells in by_run for name in cells} - set(shared))
    references = {ratio: cell_name(row)
                  for ratio, row in reference_cells([by_run[0][n] for n in shared], reference).items()}
    out = []
    for name in shared:
        rows = [cells[name] for cells in by_run]
        first = rows[0]
        accuracy = [row["accuracy"] for row in rows]
        entry = {"method": first["method"], "ratio": first["ratio"], "cell": name,
                 "questions": [row["questions"] for row in rows],
                 "visual_tokens": [row["visual_tokens"] for row in rows],
                 "accuracy": accuracy, "mean": sum(accuracy) / len(accuracy),
                 "mean_interval": _mean_interval(runs, name),
                 "vs_reference": [None] * len(runs), "pooled": None}
        other = references.get(first["ratio"])
        if first["method"] != reference and other is not None:
            for index, run in enumerate(runs):
                try:
                    entry["vs_reference"][index] = paired(run.answers[name], run.answers[other]).as_dict()
                except DifferentQuestions:
                    pass
            entry["pooled"] = _pooled(runs, name, other)
        out.append(entry)
    # ranked within their kind: a method inside the LLM keeps every token in its first layers
    for ratio, kind in {(e["ratio"], _kind(e["method"])) for e in out if e["ratio"] < 1}:
        at = [e for e in out if e["ratio"] == ratio and _kind(e["method"]) == kind]
        per_run = [_ranks({e["method"]: e["accuracy"][i] for e in at}) for i in range(len(runs))]
        for e in at:
            e["rank"] = [ranks[e["method"]] for ranks in per_run]
            e["rank_holds"] = len(set(e["rank"])) == 1
    return {"runs": [run.label for run in runs], "reference": reference, "cells": out,
            "missing": missing, "verdict": verdict(out, len(runs))}


def verdict(cells: Sequence[dict], runs: int) -> List[dict]:
    """Per ratio below 1 (falling): the best method in the vision tower and the best
    inside the LLM by mean accuracy, each with its pooled difference against the
    reference, its visual tokens (mean over the runs) and whether it is (jointly) first
    of its kind on every run."""
    out = []
    for ratio in sorted({c["ratio"] for c in cells if c["ratio"] < 1}, reverse=True):
        entry = {"ratio": ratio}
        for where in ("tower", "llm"):
            group = [c for c in cells if c["ratio"] == ratio and _kind(c["method"]) == where]
            if not group:
                entry[where] = None
                continue
            best = max(group, key=lambda c: c["mean"])
            entry[where] = {"method": best["method"], "mean": best["mean"], "pooled": best["pooled"],
                            "visual_tokens": sum(best["visual_tokens"]) / runs,
                            "best_on_every_run": all(best["accuracy"][i] >= max(c["accuracy"][i] for c in group)
                                                     for i in range(runs))}
        out.append(entry)
    return out


def _delta(versus: Optional[dict]) -> str:
    if not versus or versus.get("difference") is None:
        return ""
    return f"{points(versus['difference'], True)} {signed_interval(*versus['interval'])}"


def markdown(comparison: dict) -> str:
    """The side-by-side table, the verdict per budget and their legend."""
    labels, reference = comparison["runs"], comparison["reference"]
    columns = (["method", "ratio", "visual tokens"] + labels + ["mean [95% CI]"]
               + [f"Δ vs {reference} ({label})" for label in labels] + ["Δ pooled [95% CI]", "rank", "rank holds"])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c in comparison["cells"]:
        tokens = " / ".join(f"{t:g}" for t in dict.fromkeys(c["visual_tokens"]))
        low, high = c["mean_interval"]
        cells = ([c["method"], f"{c['ratio']:g}", tokens] + [points(a) for a in c["accuracy"]]
                 + [f"{points(c['mean'])} [{points(low)}, {points(high)}]"])
        if c["method"] == reference:
            cells += ["reference"] * len(labels) + [""]
        else:
            cells += [_delta(v) for v in c["vs_reference"]] + [_delta(c["pooled"])]
        cells += [" / ".join(map(str, c["rank"])), "yes" if c["rank_holds"] else "no"] if "rank" in c else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in %, per model and their mean; the mean's interval: per question the share of the "
              "models that answered it right, the questions resampled. Δ: the cell minus " + reference + " at the "
              "same ratio on the same questions, in points. Intervals: 95% percentile bootstrap over the questions "
              f"({significance.RESAMPLES:,} resamples, seed {significance.SEED}); pooled: that difference averaged "
              "over the models question by question, the questions resampled together. Rank: on each model, among "
              "the methods of the same kind (in the tower, or inside the LLM) at the ratio (1: best; ties share a "
              "rank); it holds when it is the same on every model."]
    if comparison["missing"]:
        lines += ["", "Not compared (missing or unfinished on some model): " + ", ".join(comparison["missing"]) + "."]
    lines += ["", by_method(comparison).rstrip("\n")]
    lines += ["", "| ratio | best in the tower | Δ pooled vs " + reference + " | best inside the LLM | Δ pooled vs "
              + reference + " |", "|---|---|---|---|---|"]
    for v in comparison["verdict"]:
        row = [f"{v['ratio']:g}"]
        for where in ("tower", "llm"):
            best = v[where]
            if best is None:
                row += ["—", ""]
                continue
            note = "" if best["best_on_every_run"] else " (not first on every model)"
            # methods inside the LLM keep every token in the first layers: the mean over layers is shown
            row += [f"{best['method']} {points(best['mean'])} at {best['visual_tokens']:.0f} tokens{note}",
                    "reference" if best["method"] == reference else _delta(best["pooled"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def by_method(comparison: dict) -> str:
    """One row per method, one column per ratio below 1: the mean accuracy, each model's,
    and the method's rank on each model ("on every model" where it holds); the cells at
    ratio 1 in a line below."""
    cells = comparison["cells"]
    ratios = sorted({c["ratio"] for c in cells if c["ratio"] < 1}, reverse=True)
    at = {(c["method"], c["ratio"]): c for c in cells}

    def accuracies(c):
        return f"{points(c['mean'])} ({' / '.join(points(a) for a in c['accuracy'])})"

    def entry(c):
        if c is None:
            return ""
        rank = f"{c['rank'][0]} on every model" if c["rank_holds"] else " / ".join(map(str, c["rank"]))
        return f"{accuracies(c)}, rank {rank}"

    lines = ["| method | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    for method in dict.fromkeys(c["method"] for c in cells if c["ratio"] < 1):
        lines.append("| " + " | ".join([method] + [entry(at.get((method, r))) for r in ratios]) + " |")
    whole = "; ".join(f"{c['method']} {accuracies(c)}" for c in cells if c["ratio"] >= 1)
    lines += ["", f"Mean accuracy in % ({' / '.join(comparison['runs'])} in brackets); rank on each model among the "
              "methods of the same kind (in the tower, or inside the LLM) at the ratio, 1 the best."
              + (f" At ratio 1: {whole}." if whole else "")]
    return "\n".join(lines) + "\n"


def plot(comparison: dict, path: str) -> None:
    """Mean accuracy over the models against visual tokens (averaged over the models where
    they differ: FitPrune's recipes are fitted per model), bars: the mean's interval."""
    rows = [{"method": c["method"], "visual_tokens": sum(c["visual_tokens"]) / len(c["visual_tokens"]),
             "accuracy": c["mean"], "accuracy_interval": c["mean_interval"]} for c in comparison["cells"]]
    report.plot(rows, path, bars="95% CI of the models' mean")
