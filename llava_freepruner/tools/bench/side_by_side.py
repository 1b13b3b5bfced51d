"""Two or more bench runs (say, one per backend) in one markdown table.

    python -m llava_freepruner.tools.bench.side_by_side RUN_DIR RUN_DIR [...]

Rows are matched by method, ratio and batch size; each run adds its visual tokens, vision,
select, LLM prefill and TTFT medians and its efficiency against its own oracle.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

COLUMNS = (("visual_tokens", "visual tokens", "{}"), ("vision_ms", "vision ms", "{:.1f}"),
           ("select_ms", "select ms", "{:.2f}"), ("llm_prefill_ms", "LLM prefill ms", "{:.1f}"),
           ("ttft_ms", "TTFT ms", "{:.1f}"), ("efficiency", "efficiency", "{:.3f}"))


def load(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir!r} holds no results.json: expected the --out folder of a finished bench run")
    with open(path) as handle:
        return json.load(handle)


def label(meta: dict) -> str:
    return f"{meta.get('backend', 'upstream')} {os.path.basename(os.path.normpath(meta['model']))}"


def table(runs: List[dict]) -> str:
    labels = [label(run["meta"]) for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two runs share the label {labels}: expected runs of different backends or models")
    keys = list(dict.fromkeys(_key(r) for run in runs for r in run["records"]))
    rows = [{_key(r): r for r in run["records"]} for run in runs]
    header = ["method", "ratio", "batch"] + [f"{title} ({name})" for _, title, _ in COLUMNS for name in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key3 in keys:
        cells = [str(part) for part in key3]
        for key, _, fmt in COLUMNS:
            cells += [_cell(fmt, run.get(key3, {}).get(key)) for run in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _key(record: dict) -> tuple:
    """Rows match by method, ratio and batch size (results from before batch lists: batch 1)."""
    return record["method"], record["ratio"], record.get("batch_size", 1)


def _cell(fmt: str, value) -> str:
    return "n/a" if value is None else fmt.format(value)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python -m llava_freepruner.tools.bench.side_by_side RUN_DIR RUN_DIR [...]", file=sys.stderr)
        return 2
    try:
        runs = [load(path) for path in argv]
        text = table(runs)
    except ValueError as err:
        print(f"side_by_side: {err}", file=sys.stderr)
        return 2
    for run in runs:
        print(f"- {label(run['meta'])}: `{run['meta']['command']}`")
    print()
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
