"""Sweeps over methods x budgets x benchmarks, with a results table and a plot.

Every finished or failed cell is appended to ``<out>/cells.jsonl`` at once;
the CSV/markdown tables are rewritten after each cell. Re-running the same
sweep skips cells already recorded as ``ok`` and retries failed ones.
"""

from __future__ import annotations

import csv
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ...config import parse_method, uses_ratio

NO_PRUNING = "none"
TABLE_COLUMNS = ("benchmark", "method", "ratio", "tag", "status", "score", "tokens_in", "tokens_kept",
                 "wall_s", "answers_file", "error")


@dataclass(frozen=True)
class Cell:
    benchmark: str
    method: str
    ratio: Optional[float]   # None for the unpruned baseline

    @property
    def key(self) -> str:
        return f"{self.benchmark}|{self.method}|{'' if self.ratio is None else self.ratio}"

    def environ(self, base: Mapping[str, str]) -> dict:
        """``base`` with this cell's pruning variables (and no others controlling the budget)."""
        env = {k: v for k, v in base.items()
               if k not in ("FREEPRUNER_METHOD", "FREEPRUNER_RATIO", "FREEPRUNER_TOKENS", "FREEPRUNER_DISABLE")}
        if self.method != NO_PRUNING:
            env["FREEPRUNER_METHOD"] = self.method
            env["FREEPRUNER_RATIO"] = repr(self.ratio)
        else:
            env["FREEPRUNER_METHOD"] = NO_PRUNING
        return env


def plan(methods: Sequence[str], ratios: Sequence[float], benchmarks: Sequence[str]) -> List[Cell]:
    """All cells; the ``none`` method is one unpruned cell per benchmark."""
    for r in ratios:
        if not 0 < r <= 1:
            raise ValueError(f"ratio {r} is not a fraction of tokens to keep; accepted: 0 < ratio <= 1")
    if not methods or not benchmarks or (not ratios and any(m != NO_PRUNING for m in methods)):
        raise ValueError("a sweep needs at least one method, one benchmark and (for pruning methods) one ratio")
    for method in methods:
        if method != NO_PRUNING and not uses_ratio(*parse_method(method)):
            raise ValueError(f"method {method!r} takes no ratio (FitPrune alone follows FITPRUNE_RECIPE), so a "
                             "sweep over ratios would repeat one run: sweep freepruner+fitprune, or run fitprune once")
    cells = []
    for bench in benchmarks:
        for method in methods:
            if method == NO_PRUNING:
                cells.append(Cell(bench, method, None))
            else:
                cells.extend(Cell(bench, method, float(r)) for r in ratios)
    return cells


def load_records(path: Path) -> Dict[str, dict]:
    """Last record per cell key from the sweep's ``cells.jsonl``."""
    records: Dict[str, dict] = {}
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: that cell runs again
                records[record["key"]] = record
    return records


def run_sweep(cells: Sequence[Cell], out_dir: Path, run_cell: Callable[[Cell, dict], dict],
              base_env: Mapping[str, str], log=print) -> Dict[str, dict]:
    """Run every cell not yet recorded ``ok``; record each outcome as it happens.

    ``run_cell(cell, environ)`` returns ``{"score", "tokens_in", "tokens_kept",
    "tag", "answers_file"}``; an exception marks the cell failed and the sweep
    goes on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells_file = out_dir / "cells.jsonl"
    records = load_records(cells_file)
    for number, cell in enumerate(cells, start=1):
        label = f"[{number}/{len(cells)}] {cell.benchmark} method={cell.method} ratio={cell.ratio}"
        if records.get(cell.key, {}).get("status") == "ok":
            log(f"{label}: done before, skipped")
            continue
        log(f"{label}: running")
        start = time.perf_counter()
        record = {"key": cell.key, "benchmark": cell.benchmark, "method": cell.method, "ratio": cell.ratio}
        try:
            record.update(run_cell(cell, cell.environ(base_env)), status="ok")
        except Exception as err:  # a failed cell is recorded and the sweep goes on
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            log(f"{label}: FAILED: {record['error']}\n{traceback.format_exc(limit=3)}")
        record["wall_s"] = round(time.perf_counter() - start, 3)
        with open(cells_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        records[cell.key] = record
        write_tables(_in_plan_order(records, cells), out_dir)
        if record["status"] == "ok":
            log(f"{label}: score={record.get('score')} tokens_kept={record.get('tokens_kept')} "
                f"({record['wall_s']:.1f} s)")
    return records


def _in_plan_order(records: Mapping[str, dict], cells: Iterable[Cell]) -> List[dict]:
    return [records[c.key] for c in cells if c.key in records]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_tables(rows: Sequence[dict], out_dir: Path) -> None:
    """``results.csv`` and ``results.md`` with one row per cell."""
    out_dir = Path(out_dir)
    with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in TABLE_COLUMNS})
    shown = [c for c in TABLE_COLUMNS if c not in ("answers_file",)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [_fmt(row.get(c)).replace("|", "\\|").replace("\n", " ") for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(rows: Sequence[dict], path: Path) -> Optional[Path]:
    """Score vs visual tokens kept, one panel per benchmark and one line per method.

    The unpruned baseline is a dashed horizontal line. Returns None when no
    cell has both a score and a token count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok" and r.get("score") is not None]
    benches = sorted({r["benchmark"] for r in ok if r.get("tokens_kept") is not None or r["method"] == NO_PRUNING})
    if not benches:
        return None
    fig, axes = plt.subplots(1, len(benches), figsize=(4.5 * len(benches), 3.6), squeeze=False)
    for ax, bench in zip(axes[0], benches):
        these = [r for r in ok if r["benchmark"] == bench]
        for method in sorted({r["method"] for r in these}):
            points = sorted((r["tokens_kept"], r["score"]) for r in these
                            if r["method"] == method and r.get("tokens_kept") is not None)
            if method == NO_PRUNING:
                for r in these:
                    if r["method"] == NO_PRUNING:
                        ax.axhline(r["score"], linestyle="--", color="gray", label="none (unpruned)")
            elif points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        ax.set_title(bench)
        ax.set_xlabel("visual tokens kept per image")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

