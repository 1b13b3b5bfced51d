"""Fidelity report: every method x ratio on a folder of photos, four proxies each.

Per photo: one plain forward gives the reference (feature-layer tokens, the
pooled [CLS] output, the saliency map); each method x ratio then runs the
tower with its hooks to select, and the proxies compare kept with full.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch

from ...config import Config
from ...runtime.tower import gather_kept
from . import images as photos
from . import proxies
from .towers import Vision, run_method

METRICS = ("saliency", "coverage", "recon_error", "cls_cosine")


@torch.no_grad()
def evaluate_photo(vision: Vision, pixels: torch.Tensor, method_names: Sequence[str],
                   ratios: Sequence[float], base: Optional[Config] = None) -> List[dict]:
    """Proxies of every method x ratio on one photo ``pixels`` (1, 3, H, W)."""
    tower = vision.tower
    features = tower(pixels)[0]                       # (1 + N, D), [CLS] first
    full_cls = tower.outputs.pooler_output[0]
    saliency_map = vision.saliency_map()
    saliency = None if saliency_map is None else proxies.patch_saliency(saliency_map[0], vision.grid)
    patches = features[1:]
    records = []
    for name in method_names:
        for ratio in ratios:
            selection = run_method(tower, pixels, name, ratio, base).selections[0]
            kept = selection.indices
            # Merging methods: [CLS] re-run with every token they feed (their own [CLS] in front,
            # merged rows last); coverage and reconstruction see the kept patches only.
            fed = gather_kept(features, selection, with_cls=True)
            kept_cls = tower.cls_output(fed[None])[0]
            records.append({
                "method": name, "ratio": ratio, "kept": selection.num_tokens,
                "saliency": None if saliency is None else proxies.saliency_kept(saliency, kept),
                "coverage": proxies.coverage(patches, kept),
                "recon_error": proxies.reconstruction_error(patches, kept),
                "cls_cosine": proxies.cosine(kept_cls, full_cls),
            })
    return records


def average(records: Sequence[dict]) -> List[dict]:
    """Mean of each proxy per (method, ratio), in first-seen order."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for record in records:
        groups[(record["method"], record["ratio"])].append(record)
    averaged = []
    for (method, ratio), group in groups.items():
        row = {"method": method, "ratio": ratio, "kept": group[0]["kept"], "photos": len(group)}
        for metric in METRICS:
            values = [r[metric] for r in group]
            row[metric] = None if None in values else sum(values) / len(values)
        averaged.append(row)
    return averaged


def run(vision: Vision, folder: str, method_names: Sequence[str], ratios: Sequence[float],
        base: Optional[Config] = None, progress: bool = True) -> List[dict]:
    """Averaged records over every photo in ``folder``."""
    from tqdm import tqdm

    paths = photos.list_images(folder)
    records = []
    for path in tqdm(paths, desc="photos", unit="photo", disable=not progress):
        _, pixels = vision.prepare(photos.open_image(path))
        records += evaluate_photo(vision, pixels[None], method_names, ratios, base)
    return average(records)


def markdown_table(rows: Sequence[dict]) -> str:
    lines = [
        "| method | ratio | kept | saliency kept ↑ | coverage ↑ | recon error ↓ | CLS cosine ↑ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:g} | {r['kept']} | " + " | ".join(cell(r[m]) for m in METRICS) + " |")
    return "\n".join(lines)


def pareto_plot(rows: Sequence[dict], path: str, title: str) -> None:
    """Saliency kept (x) against coverage (y), one line per method through its ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        axes.plot([r["saliency"] for r in mine], [r["coverage"] for r in mine], marker="o", label=method)
        for r in mine:
            axes.annotate(f"{r['ratio']:g}", (r["saliency"], r["coverage"]), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    axes.set_xlabel("saliency mass kept (higher: more of the salient object)")
    axes.set_ylabel("coverage (higher: dropped tokens better represented)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(rows: Sequence[dict], out: str, meta: dict) -> Dict[str, str]:
    """OUT/results.json, OUT/results.md and (with saliency) OUT/pareto.png; returns their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "results.json"), "markdown": os.path.join(out, "results.md")}
    with open(paths["json"], "w") as handle:
        json.dump({**meta, "records": list(rows)}, handle, indent=2)
    with open(paths["markdown"], "w") as handle:
        handle.write(markdown_table(rows) + "\n")
    if all(r["saliency"] is not None for r in rows):
        paths["plot"] = os.path.join(out, "pareto.png")
        pareto_plot(rows, paths["plot"], f"{meta['vision']}, {meta['photos']} photos, {meta['num_patches']} patches")
    return paths
