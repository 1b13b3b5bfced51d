"""``python -m llava_freepruner <command>``.

Each command is a module in this package with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; list it in ``COMMANDS``.
Command modules are imported only when chosen, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "config": "print the effective configuration read from FREEPRUNER_* variables",
    "bench": "time, FLOPs and memory of each pruning method and ratio, side by side with an oracle",
    "demo": "run the unchanged upstream LLaVA eval on a tiny offline checkpoint, with and without pruning",
    "fitprune-fit": "fit a FitPrune recipe (per-layer deletions) for a FLOPs reduction target",
    "visualize": "draw the tokens each selection method keeps on a photo (pivotal, complementary, dropped)",
    "fidelity": "measure what each selection method keeps on real photos: saliency, coverage, reconstruction, CLS fidelity",
    "toy-model": "write the toy LLaVA (DINOv2-S + SmolLM2-135M, projector trained here) as a transformers checkpoint",
    "toy-questions": "write a question set (scenes of coloured shapes on real photos) in model_vqa_loader JSON lines",
    "accuracy": "accuracy of a transformers LLaVA checkpoint per pruning method and ratio, through generate()",
    "accuracy-report": "rewrite an accuracy folder's results.json, results.md and accuracy.png from its answer files, without a model",
    "accuracy-seeds": "compare accuracy folders of one grid answered by models trained with different seeds: means, pooled differences, ranks",
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner", description="Training-free visual-token pruning for LLaVA.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    from ...runtime.quantization import quiet_torchao_import

    quiet_torchao_import()
    module = importlib.import_module(f".{name.replace('-', '_')}", __name__)
    command = argparse.ArgumentParser(prog=f"python -m llava_freepruner {name}", description=COMMANDS[name])
    module.add_arguments(command)
    return module.run(command.parse_args(argv[1:]))
