"""``python -m llava_freepruner accuracy-report``: an ``accuracy`` folder's report
again, from the answer files under ``OUT/cells`` alone (no model, questions or images)."""

from __future__ import annotations

import json
import os
import sys

from .accuracy import REFERENCE
from .bench import command_line

# the options of `accuracy` a cell's .settings.json records -> the results.json meta they fill
SETTINGS = (("--model", "model"), ("--questions", "question_file"), ("--max-new-tokens", "max_new_tokens"))


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="accuracy_out",
                        help="the --out of an accuracy run (default: accuracy_out): every answered cell of "
                             "OUT/cells is reported (visual tokens from its .stats.jsonl), and OUT/results.json, "
                             "results.md and accuracy.png are rewritten")
    parser.add_argument("--reference", metavar="METHOD",
                        help="the method every other cell is compared with, question by question, at the same "
                             "ratio (for 'none': the unpruned cell); one of the folder's methods "
                             f"(default: {REFERENCE}, where the folder has it)")


def meta_of(out: str, rows, settings, command: str) -> dict:
    """The report's meta: the model, question file and max new tokens as an
    earlier results.json in ``out`` spells them, else as the cells' settings
    record them (ValueError naming the cells when the settings disagree);
    ``answered_by``: the accuracy command that wrote that results.json."""
    previous = {}
    results = os.path.join(out, "results.json")
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as handle:
            previous = json.load(handle).get("meta", {})
    meta = {"command": command}
    answered_by = previous.get("answered_by") or previous.get("command")
    if answered_by and " accuracy-report" not in answered_by:     # the accuracy run that wrote it
        meta["answered_by"] = answered_by
    for option, key in SETTINGS:
        values = {name: recorded[option] for name, recorded in settings.items() if option in recorded}
        if len(set(map(json.dumps, values.values()))) > 1:
            raise ValueError(f"the cells of {out} were answered with different {option} values ("
                             + "; ".join(f"{name}: {value!r}" for name, value in values.items())
                             + "): one report would mislabel them")
        # an earlier results.json spells them as they were typed; the settings hold absolute paths
        meta[key] = previous.get(key, next(iter(values.values()), "unknown"))
    meta["questions"] = max(row["questions"] for row in rows)
    return meta


def run(args) -> int:
    from ..accuracy import report, summary
    from .accuracy import reference_method

    try:
        rows, answers, settings = summary.load(args.out)
        reference = reference_method(args.reference, [row["method"] for row in rows],
                                     f"the methods answered in {args.out}")
        meta = meta_of(args.out, rows, settings, command_line(args, "accuracy-report"))
    except ValueError as err:
        print(f"llava_freepruner accuracy-report: {err}", file=sys.stderr)
        return 2
    paths = report.write(args.out, meta, rows, answers, reference)
    for path in paths:
        print(f"accuracy-report: wrote {path}", file=sys.stderr)
    with open(paths[1], encoding="utf-8") as handle:      # results.md
        print(handle.read())
    return 0
