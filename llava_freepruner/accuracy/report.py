"""results.json, results.md and accuracy-vs-visual-tokens plot of finished cells."""

from __future__ import annotations

import json
import os
from typing import List


def markdown(meta: dict, rows: List[dict]) -> str:
    families = sorted({f for row in rows for f in row["families"]})
    lines = [f"Model `{meta['model']}`, {meta['questions']} questions from `{meta['question_file']}`.", "",
             "| method | ratio | visual tokens | accuracy | " + " | ".join(families) + " |",
             "|---|---|---|---|" + "---|" * len(families)]
    for row in rows:
        per_family = " | ".join(f"{100 * row['families'][f]:.1f}" if f in row["families"] else "" for f in families)
        lines.append(f"| {row['method']} | {row['ratio']:g} | {row['visual_tokens']:g} | "
                     f"{100 * row['accuracy']:.1f} | {per_family} |")
    lines += ["", "Accuracy in %, exact match after lower-casing and removing a final period. Visual tokens: "
              "mean per image from the plugin's stats (for methods inside the LLM: averaged over its layers), "
              "or the unpruned count where it wrote none."]
    return "\n".join(lines) + "\n"


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    # tab20 holds ten dark/light pairs: the first ten methods get the dark shades, the next ten the light
    colors, markers = plt.get_cmap("tab20").colors, "os^vDP*Xhp<>"
    for index, method in enumerate(dict.fromkeys(row["method"] for row in rows)):
        points = sorted((r["visual_tokens"], 100 * r["accuracy"]) for r in rows if r["method"] == method)
        axes.plot(*zip(*points), marker=markers[index % len(markers)], color=colors[2 * index % 20 + index // 10 % 2],
                  label=method)
    axes.set_xlabel("visual tokens per image")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write(out: str, meta: dict, rows: List[dict]) -> List[str]:
    paths = [os.path.join(out, name) for name in ("results.json", "results.md", "accuracy.png")]
    with open(paths[0], "w", encoding="utf-8") as handle:
        json.dump({"meta": meta, "cells": rows}, handle, indent=1)
    with open(paths[1], "w", encoding="utf-8") as handle:
        handle.write(markdown(meta, rows))
    plot(rows, paths[2])
    return paths
