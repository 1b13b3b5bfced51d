"""A cell's files under ``OUT/cells`` and its row of the report, without torch or a model."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

from ...config import LLM_METHODS, VISION_METHODS
from ...runtime.stats import read_jsonl
from .plugin import stats_records

SUFFIXES = (("answers", ".jsonl"), ("stats", ".stats.jsonl"), ("settings", ".settings.json"))


def cell_paths(folder: str, name: str) -> Dict[str, str]:
    """The answers, stats and settings files of the cell ``name`` (``method@ratio``) in ``folder``."""
    return {kind: os.path.join(folder, name + suffix) for kind, suffix in SUFFIXES}


def answered(path: str) -> Dict[str, dict]:
    """The answer records of a cell's answers file by question id (none: no file)."""
    return {r["question_id"]: r for r in read_jsonl(path)} if os.path.isfile(path) else {}


def correct_by_question(records: Sequence[dict]) -> Dict[str, bool]:
    """Question id -> answered right: what :func:`..significance.paired` pairs."""
    return {str(r["question_id"]): bool(r["correct"]) for r in records}


def summarize(cell, records: Sequence[dict], stats_path: str) -> dict:
    """Accuracy overall and per family of ``cell`` (anything with ``method`` and
    ``ratio``); visual tokens per image from the plugin's stats when it wrote any
    (for a method inside the LLM, the mean over layers of the visual tokens each
    keeps), else the unpruned count."""
    families = sorted({r["family"] for r in records})
    stats = [s for s in stats_records(stats_path) if "tokens_out" in s]
    alive = [s["llm_visual_alive"] for s in stats if s.get("llm_visual_alive")]
    if alive:       # pruned inside the LLM: the visual tokens each layer keeps, averaged over layers
        tokens, source = sum(sum(a) / len(a) for a in alive) / len(alive), "llm_layer_mean"
    elif stats:
        tokens, source = sum(s["tokens_out"] for s in stats) / len(stats), "stats"
    else:
        tokens, source = sum(r["unpruned_tokens"] for r in records) / len(records), "unpruned"
    return {
        "method": cell.method, "ratio": cell.ratio, "questions": len(records),
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "families": {f: sum(r["correct"] for r in records if r["family"] == f)
                     / sum(1 for r in records if r["family"] == f) for f in families},
        "visual_tokens": round(tokens, 2), "tokens_from": source,
    }


class _Named:
    def __init__(self, method: str, ratio: float):
        self.method, self.ratio = method, ratio


# the unpruned cell, then the methods in the tower, then those inside the LLM (unknown names last)
GRID_ORDER = ("none",) + VISION_METHODS + LLM_METHODS
_PLACE = {method: index for index, method in enumerate(GRID_ORDER)}


def load(out: str) -> Tuple[List[dict], Dict[str, Dict[str, bool]], Dict[str, dict]]:
    """Every cell of ``out/cells`` with at least one answer, from its files alone:
    the report rows (ordered as in ``out/results.json`` where it lists them, the
    others after them by method, as :data:`GRID_ORDER` lists them, and falling
    ratio), question id -> right per cell name, and each cell's recorded settings (``{}`` where it has none).
    ValueError when there is no such cell."""
    folder = os.path.join(out, "cells")
    if not os.path.isdir(folder):
        raise ValueError(f"--out {out!r}: no cells folder in it ({folder}); was `accuracy` run with this --out?")
    names = []
    for entry in os.listdir(folder):
        if entry.endswith(".jsonl") and not entry.endswith(".stats.jsonl") and "@" in entry:
            name = entry[:-len(".jsonl")]
            method, _, ratio = name.rpartition("@")
            try:
                names.append((method, float(ratio), name))
            except ValueError:
                continue
    listed = {}
    results = os.path.join(out, "results.json")
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as handle:
            for index, row in enumerate(json.load(handle).get("cells", [])):
                listed.setdefault(f"{row['method']}@{row['ratio']:g}", index)
    names.sort(key=lambda m: (listed.get(m[2], len(listed)), _PLACE.get(m[0], len(_PLACE)), m[0], -m[1]))
    rows, answers, settings = [], {}, {}
    for method, ratio, name in names:
        paths = cell_paths(folder, name)
        records = list(answered(paths["answers"]).values())
        if not records:
            continue
        rows.append(summarize(_Named(method, ratio), records, paths["stats"]))
        answers[name] = correct_by_question(records)
        settings[name] = {}
        if os.path.isfile(paths["settings"]):
            with open(paths["settings"], encoding="utf-8") as handle:
                settings[name] = json.load(handle)
    if not rows:
        raise ValueError(f"--out {out!r}: no answered cell in {folder}")
    return rows, answers, settings
