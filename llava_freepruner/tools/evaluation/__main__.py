"""``python -m llava_freepruner.tools.evaluation {run,sweep,tag}``: benchmark runs from the shell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

DEFAULT_ROOT = "playground/data/eval"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", required=True, help="checkpoint directory or hub id (as upstream)")
    p.add_argument("--model-base", default=None)
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"eval data root (default: {DEFAULT_ROOT})")
    p.add_argument("--chunks", type=int, default=1, help="processes sharing this machine (CPU or one GPU)")
    p.add_argument("--gpus", default=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                   help="comma-separated device ids, one chunk each (default: $CUDA_VISIBLE_DEVICES)")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--no-score", action="store_true", help="answer only; do not score")


def _floats(text: str) -> list:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ratios {text!r}: expected comma-separated fractions, e.g. 1.0,0.5,0.25")


def _names(text: str) -> list:
    return [x.strip() for x in text.split(",") if x.strip()]


def _run_kwargs(args) -> dict:
    return dict(chunks=args.chunks, gpus=_names(args.gpus), limit=args.limit, conv_mode=args.conv_mode,
                model_base=args.model_base, score=not args.no_score)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import benchmarks

    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.tools.evaluation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer and score one benchmark with the current FREEPRUNER_* settings")
    run.add_argument("benchmark", choices=sorted(benchmarks.BENCHMARKS))
    run.add_argument("--force", action="store_true", help="answer again even if a complete answer file exists")
    _add_run_options(run)
    sweep = sub.add_parser("sweep", help="methods x ratios x benchmarks -> results table and plot")
    sweep.add_argument("--methods", type=_names, required=True, help="e.g. none,freepruner,random")
    sweep.add_argument("--ratios", type=_floats, default=[], help="fractions of visual tokens kept, e.g. 0.5,0.25")
    sweep.add_argument("--benchmarks", type=_names, required=True, help="e.g. pope,mme")
    sweep.add_argument("--out", required=True, help="folder for cells.jsonl, results.csv/.md and plot.png")
    _add_run_options(sweep)
    tag = sub.add_parser("tag", help="print the pruning tag (or run name) of the current environment")
    tag.add_argument("model_path", nargs="?", help="print <model>__<tag> instead of the tag")
    args = parser.parse_args(argv)

    if args.command == "tag":
        from .naming import pruning_tag, run_name

        print(run_name(args.model_path, os.environ) if args.model_path else pruning_tag(os.environ))
        return 0
    if args.command == "run":
        from .driver import run_benchmark

        result = run_benchmark(args.benchmark, args.model_path, Path(args.root), force=args.force,
                               **_run_kwargs(args))
        print(f"{result.benchmark} {result.run_name}: score={result.scores and result.scores.get('score')} "
              f"tokens={result.tokens}")
        return 0
    return _sweep(args)


def _sweep(args) -> int:
    from . import benchmarks, sweep
    from .driver import run_benchmark

    for name in args.benchmarks:
        benchmarks.get(name)
    try:
        cells = sweep.plan(args.methods, args.ratios, args.benchmarks)
    except ValueError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2

    def run_cell(cell, environ):
        result = run_benchmark(cell.benchmark, args.model_path, Path(args.root), environ=environ,
                               **_run_kwargs(args))
        tokens = result.tokens or {}
        return {"score": result.scores and result.scores.get("score"), "tokens_in": tokens.get("tokens_in"),
                "tokens_kept": tokens.get("tokens_out"), "tag": result.tag,
                "answers_file": str(result.answers_file)}

    records = sweep.run_sweep(cells, Path(args.out), run_cell, os.environ)
    rows = [records[c.key] for c in cells if c.key in records]
    png = sweep.plot(rows, Path(args.out) / "plot.png")
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"sweep: {len(rows) - len(failed)} ok, {len(failed)} failed; table {Path(args.out) / 'results.md'}"
          + (f", plot {png}" if png else ", no plot (no cell with score and token count)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
