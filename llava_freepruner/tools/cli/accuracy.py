"""``python -m llava_freepruner accuracy``: accuracy per pruning method and ratio."""

from __future__ import annotations

import argparse
import os
import sys

from ..accuracy.report import DEFAULT_REFERENCE as REFERENCE
from .bench import _floats, command_line


def _batch_size(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a whole number >= 1 (default 1)")
    return int(text)


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a transformers LLaVA checkpoint folder (e.g. from toy-model)")
    parser.add_argument("--questions", required=True, help="JSON lines: question_id, image, text, answer[, family]")
    parser.add_argument("--images", required=True, help="folder the questions' image names are relative to")
    parser.add_argument("--methods", default="none",
                        help="comma-separated FREEPRUNER_METHOD values, e.g. none,freepruner,random (default: none)")
    parser.add_argument("--ratios", default="1.0",
                        help="comma-separated fractions of visual tokens kept (default: 1.0); "
                             "the method 'none' runs once, at 1.0, whatever the ratios")
    parser.add_argument("--fitprune-recipe",
                        help="FITPRUNE_RECIPE for methods that include fitprune: one file for every ratio, "
                             "or one per ratio as RATIO=FILE,... (e.g. 0.5=r50.json,0.25=r75.json)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=_batch_size, default=1,
                        help="questions per generate(), left-padded; the answers are those of one at a time, "
                             "so a resume may change it (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", default="accuracy_out", help="output folder (default: accuracy_out); reruns resume")
    parser.add_argument("--reference", metavar="METHOD",
                        help="the method every other cell is compared with, question by question, at the same ratio "
                             "(for 'none': the unpruned cell); one of --methods (default: "
                             f"{REFERENCE}, where --methods has it)")


def reference_method(chosen, methods, source="the methods of the run"):
    """The reference method spelled as the cells spell it: ``chosen`` (``--reference``)
    must be one of ``methods`` (as cells spell them); when it is None, freepruner
    (whether or not ``methods`` has it: then nothing is compared). ValueError
    naming the accepted values, ``source``, otherwise."""
    from ...config import ConfigError, parse_method

    if chosen is None:
        return REFERENCE
    accepted = list(dict.fromkeys(methods))
    try:
        method = "+".join(m for m in parse_method(chosen) if m) or "none"
    except ConfigError:
        method = None
    if method not in accepted:
        raise ValueError(f"--reference {chosen!r} is not valid: expected one of {source} ({', '.join(accepted)})")
    return method


def run(args) -> int:
    from ...config import ConfigError

    def fail(message: str) -> int:
        print(f"llava_freepruner accuracy: {message}", file=sys.stderr)
        return 2

    if args.limit is not None and args.limit < 1:
        return fail(f"--limit {args.limit} is not valid: expected >= 1")
    if args.max_new_tokens < 1:
        return fail(f"--max-new-tokens {args.max_new_tokens} is not valid: expected >= 1")
    if args.threads < 1:
        return fail(f"--threads {args.threads} is not valid: expected >= 1")
    from ..accuracy import cells as cell_grid, questions

    try:
        grid = cell_grid.grid([m.strip() for m in args.methods.split(",") if m.strip()], _floats(args.ratios),
                              recipes=cell_grid.parse_recipes(args.fitprune_recipe))
        reference = reference_method(args.reference, [cell.method for cell in grid])
        items = questions.read(args.questions, args.images, args.limit)
    except (ConfigError, ValueError) as err:
        return fail(str(err))
    if not os.path.isdir(args.model):
        return fail(f"--model {args.model!r}: no such checkpoint folder")
    return _run(args, grid, items, reference)


def _run(args, grid, items, reference=REFERENCE) -> int:
    import torch
    from tqdm import tqdm

    from ..accuracy import report
    from ..accuracy.plugin import NotPruned
    from ..accuracy.runner import Model, SettingsChanged, check_resume, run_cell, summarize
    from ..accuracy.summary import correct_by_question

    folder = os.path.join(args.out, "cells")
    # what shapes the answers: a resume into --out must use the same
    settings = {"--model": os.path.abspath(args.model), "--max-new-tokens": args.max_new_tokens,
                "--questions": os.path.abspath(args.questions), "--images": os.path.abspath(args.images)}
    try:
        for cell in grid:
            check_resume(folder, cell, settings)
    except SettingsChanged as err:
        print(f"llava_freepruner accuracy: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model = Model(args.model, args.max_new_tokens)
    os.makedirs(folder, exist_ok=True)
    meta = {"command": command_line(args, "accuracy"),
            "model": args.model, "question_file": args.questions, "questions": len(items),
            "max_new_tokens": args.max_new_tokens}
    rows, answers, paths = [], {}, []
    progress = tqdm(total=len(grid) * len(items), desc="accuracy", unit="q")
    try:
        for cell in grid:
            progress.set_postfix_str(cell.name)
            records = run_cell(model, cell, items, folder, settings, progress.update, args.batch_size)
            rows.append(summarize(cell, records, os.path.join(folder, f"{cell.name}.stats.jsonl")))
            answers[cell.name] = correct_by_question(records)
    except NotPruned as err:
        print(f"llava_freepruner accuracy: {err}", file=sys.stderr)
        return 1
    finally:
        progress.close()
        if rows:        # the finished cells, also when a later one failed
            paths = report.write(args.out, meta, rows, answers, reference)
            for path in paths:
                print(f"accuracy: wrote {path}", file=sys.stderr)
    if paths:
        with open(paths[1], encoding="utf-8") as handle:      # results.md
            print(handle.read())
    return 0
