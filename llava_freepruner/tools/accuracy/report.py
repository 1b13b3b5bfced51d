"""results.json, results.md and accuracy-vs-visual-tokens plot of finished cells.

Every cell answers the same questions, so each is compared with the reference
method's cell of the same ratio (the unpruned cell when the reference is
``none``) question by question: see :mod:`.significance`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional

from . import significance
from .significance import DifferentQuestions, paired, wilson

DEFAULT_REFERENCE = "freepruner"
DIFFERENT = "n/a (different questions)"


def cell_name(row: dict) -> str:
    return f"{row['method']}@{row['ratio']:g}"


def _wilson(row: dict) -> List[float]:
    return list(wilson(round(row["accuracy"] * row["questions"]), row["questions"]))


def _interval(row: dict) -> List[float]:
    return row["accuracy_interval"] if "accuracy_interval" in row else _wilson(row)


def reference_cells(rows: List[dict], reference: str) -> Dict[float, dict]:
    """Ratio -> the reference method's row at that ratio; for ``none`` (one
    unpruned cell) that row at every ratio of ``rows``."""
    cells = {row["ratio"]: row for row in rows if row["method"] == reference}
    if reference == "none" and cells:
        return {row["ratio"]: next(iter(cells.values())) for row in rows}
    return cells


def annotate(rows: List[dict], answers: Optional[Mapping[str, Mapping[str, bool]]],
             reference: str = DEFAULT_REFERENCE) -> List[dict]:
    """Copies of ``rows`` with ``accuracy_interval`` (95% Wilson, fractions) and,
    given ``answers`` (cell name -> question id -> right), ``vs_reference``: None
    for the reference's own cells and cells with no reference cell at their ratio,
    else the reference cell's name and :meth:`.significance.Paired.as_dict` (cell
    minus reference), or ``difference`` None and ``note`` where the two did not
    answer the same question ids."""
    references = reference_cells(rows, reference)
    annotated = []
    for row in rows:
        row = dict(row, accuracy_interval=_wilson(row))
        if answers is not None:
            other = references.get(row["ratio"])
            if row["method"] == reference or other is None:
                row["vs_reference"] = None
            else:
                try:
                    comparison = paired(answers[cell_name(row)], answers[cell_name(other)]).as_dict()
                except DifferentQuestions:
                    comparison = {"difference": None, "note": "different questions"}
                row["vs_reference"] = dict(reference=cell_name(other), **comparison)
        annotated.append(row)
    return annotated


def points(fraction: float, signed: bool = False) -> str:
    text = f"{100 * fraction:+.1f}" if signed else f"{100 * fraction:.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def signed_interval(low: float, high: float) -> str:
    """``[low, high]`` of a difference, in signed points."""
    return f"[{points(low, True)}, {points(high, True)}]"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _comparison(row: dict, reference: str) -> List[str]:
    if row["method"] == reference:
        return ["reference", "", ""]
    versus = row.get("vs_reference")
    if versus is None:
        return ["—", "", ""]
    if versus["difference"] is None:
        return [DIFFERENT, "", ""]
    low, high = versus["interval"]
    return [points(versus["difference"], True), signed_interval(low, high),
            _p(versus["mcnemar_p"])]


def markdown(meta: dict, rows: List[dict]) -> str:
    """The table of ``rows`` (those of :func:`annotate` carry the paired columns,
    against ``meta['reference']``) and its legend."""
    families = sorted({f for row in rows for f in row["families"]})
    reference = meta.get("reference")
    compared = reference is not None and any("vs_reference" in row for row in rows) \
        and any(row["method"] == reference for row in rows)
    counts = sorted({row["questions"] for row in rows})
    columns = ["method", "ratio", "visual tokens"] + (["questions"] if len(counts) > 1 else []) + \
        ["accuracy", "95% CI"] + ([f"Δ vs {reference}", "Δ 95% CI", "McNemar p"] if compared else []) + families
    questions = f"{meta['questions']} questions" if len(counts) == 1 else \
        f"{counts[0]}-{counts[-1]} questions (per cell: the questions column)"
    lines = [f"Model `{meta['model']}`, {questions} from `{meta['question_file']}`.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        low, high = _interval(row)
        cells = [row["method"], f"{row['ratio']:g}", f"{row['visual_tokens']:g}"]
        cells += [str(row["questions"])] if len(counts) > 1 else []
        cells += [points(row["accuracy"]), f"[{points(low)}, {points(high)}]"]
        cells += _comparison(row, reference) if compared else []
        cells += [points(row["families"][f]) if f in row["families"] else "" for f in families]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in %, exact match after lower-casing and removing a final period. Visual tokens: "
              "mean per image from the plugin's stats (for methods inside the LLM: averaged over its layers), "
              "or the unpruned count where it wrote none. 95% CI: Wilson score interval of the accuracy."]
    if compared:
        which = "the unpruned model's (none)" if reference == "none" else f"that of {reference} at the same ratio"
        lines += ["", f"Δ vs {reference}: the cell's accuracy minus {which}, in points, on the same questions; "
                  f"Δ 95% CI: percentile bootstrap over the questions ({significance.RESAMPLES:,} resamples, "
                  f"seed {significance.SEED}). A difference whose interval excludes 0 is real at 95%. McNemar p: "
                  "exact two-sided test on the questions exactly one of the two cells answers right. "
                  f"—: no {reference} cell to compare with; {DIFFERENT}: the two cells did not answer the same "
                  "question ids, so they are not compared."]
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str, bars: str = "95% Wilson interval") -> None:
    """Accuracy against visual tokens, one series per method, with each row's interval
    (``accuracy_interval``, else its Wilson interval) as error bars named ``bars``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt, transforms

    figure, axes = plt.subplots(figsize=(6, 4))
    # tab20 holds ten dark/light pairs: the first ten methods get the dark shades, the next ten the light
    colors, markers = plt.get_cmap("tab20").colors, "os^vDP*Xhp<>"
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for index, method in enumerate(methods):
        points = sorted((r["visual_tokens"], 100 * r["accuracy"], *(100 * v for v in _interval(r)))
                        for r in rows if r["method"] == method)
        tokens, accuracy, low, high = zip(*points)
        # methods at the same token count are drawn side by side, 2 points apart, so their bars stay apart
        dodge = transforms.offset_copy(axes.transData, fig=figure, x=2 * (index - (len(methods) - 1) / 2),
                                       units="points")
        axes.errorbar(tokens, accuracy, yerr=([a - lo for a, lo in zip(accuracy, low)],
                                              [hi - a for a, hi in zip(accuracy, high)]),
                      marker=markers[index % len(markers)], color=colors[2 * index % 20 + index // 10 % 2],
                      markersize=4, capsize=2, elinewidth=0.8, transform=dodge, label=method)
        axes.update_datalim(list(zip(tokens, accuracy)))     # shifted artists do not widen the axes
    axes.autoscale_view()
    axes.set_xlabel(f"visual tokens per image (bars: {bars})")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(out: str, meta: dict, rows: List[dict], answers: Optional[Mapping[str, Mapping[str, bool]]] = None,
          reference: str = DEFAULT_REFERENCE) -> List[str]:
    """results.json (``meta`` with the reference and how the intervals are made,
    the :func:`annotate` rows), results.md and accuracy.png in ``out``."""
    meta = dict(meta, reference=reference, statistics={
        "accuracy_interval": "95% Wilson score interval",
        "vs_reference": f"cell minus reference; interval: 95% percentile bootstrap over the questions, "
                        f"{significance.RESAMPLES} resamples, seed {significance.SEED}; "
                        "mcnemar_p: exact two-sided McNemar test"})
    rows = annotate(rows, answers, reference)
    paths = [os.path.join(out, name) for name in ("results.json", "results.md", "accuracy.png")]
    with open(paths[0], "w", encoding="utf-8") as handle:
        json.dump({"meta": meta, "cells": rows}, handle, indent=1)
    with open(paths[1], "w", encoding="utf-8") as handle:
        handle.write(markdown(meta, rows))
    plot(rows, paths[2])
    return paths
