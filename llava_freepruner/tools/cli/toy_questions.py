"""``python -m llava_freepruner toy-questions``: a question set on generated scenes."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from ..toy.photos import PHOTO_SETS

    parser.add_argument("--out", required=True, help="folder: questions.jsonl and images/ are written in it")
    parser.add_argument("--count", type=int, default=200, help="questions, one scene each (default: 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--photos", default="heldout",
                        help=f"comma-separated photo names, sets ({', '.join(PHOTO_SETS)}) or image paths "
                             "(default: heldout, photos never used in training)")
    parser.add_argument("--balanced", action="store_true",
                        help="each question family gets a quarter of the questions (default: families drawn at random)")


def run(args) -> int:
    from ..toy.dataset import write_question_set

    try:
        path = write_question_set(args.out, args.seed, [p.strip() for p in args.photos.split(",") if p.strip()],
                                  args.count, balanced=args.balanced)
    except ValueError as err:
        print(f"llava_freepruner toy-questions: {err}", file=sys.stderr)
        return 2
    print(f"toy-questions: wrote {path} and {args.count} images")
    return 0
