"""``python -m llava_freepruner accuracy-seeds``: two or more ``accuracy`` folders of
the same grid, answered by models trained with different seeds, side by side (from
their answer files alone): per-model and mean accuracy, paired and pooled differences
against the reference method, whether each method's rank holds, the best method per
budget, and a plot of the mean accuracy against visual tokens."""

from __future__ import annotations

import json
import os
import sys

from .accuracy import REFERENCE
from .bench import command_line


def add_arguments(parser) -> None:
    parser.add_argument("--run", action="append", required=True, metavar="[LABEL=]DIR",
                        help="the --out of an accuracy run (at least two; repeat the option), optionally named "
                             "(e.g. 'seed 0=toy_accuracy'; default label: the folder's name)")
    parser.add_argument("--reference", metavar="METHOD",
                        help="the method every other cell is compared with at the same ratio; one of the methods "
                             f"every run answered (default: {REFERENCE})")
    parser.add_argument("--out", required=True,
                        help="folder for seeds.md, seeds.json and seeds.png (created if missing)")


def parse_run(text: str):
    """'LABEL=DIR' or 'DIR' -> (label, folder)."""
    label, sep, folder = text.partition("=")
    if not sep:
        label, folder = os.path.basename(os.path.normpath(text)), text
    if not label or not folder:
        raise ValueError(f"--run {text!r} is not valid: expected DIR or LABEL=DIR")
    return label, folder


def run(args) -> int:
    from ..accuracy import seeds, summary
    from .accuracy import reference_method

    try:
        runs = []
        for text in args.run:
            label, folder = parse_run(text)
            rows, answers, _ = summary.load(folder)
            runs.append(seeds.Run(label, rows, answers))
        labels = [r.label for r in runs]
        if len(set(labels)) < len(labels):
            raise ValueError(f"--run labels {labels} repeat: name each run (LABEL=DIR)")
        shared = set.intersection(*({row["method"] for row in r.rows} for r in runs))
        reference = reference_method(args.reference, sorted(shared), "the methods every run answered")
        comparison = seeds.compare(runs, reference)
    except ValueError as err:
        print(f"llava_freepruner accuracy-seeds: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    text = seeds.markdown(comparison)
    comparison["command"] = command_line(args, "accuracy-seeds")
    for name, content in (("seeds.json", json.dumps(comparison, indent=1)), ("seeds.md", text)):
        path = os.path.join(args.out, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(content)
        print(f"accuracy-seeds: wrote {path}", file=sys.stderr)
    path = os.path.join(args.out, "seeds.png")
    seeds.plot(comparison, path)
    print(f"accuracy-seeds: wrote {path}", file=sys.stderr)
    print(text)
    return 0
