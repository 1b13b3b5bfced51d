"""``python -m llava_freepruner fitprune-fit``: fit a FitPrune recipe for a model."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--model-path", required=True,
                        help="checkpoint directory or hub name: upstream llava's LLaVA, or transformers' "
                             "LlavaForConditionalGeneration / LlavaNextForConditionalGeneration / Qwen2-VL / "
                             "Qwen2.5-VL / Qwen3-VL (told apart by its config.json)")
    parser.add_argument("--model-base", default=None, help="upstream LLaVA checkpoints only (LoRA, projector-only)")
    parser.add_argument("--question-file", required=True,
                        help="calibration questions, llava.eval.model_vqa_loader jsonl ({question_id, image, text})")
    parser.add_argument("--image-folder", required=True)
    parser.add_argument("--reduction", required=True,
                        help="fraction of the visual-token FLOPs in the LLM to remove, 0 < r < 1 (e.g. 0.6), or "
                             "several, comma-separated (e.g. 0.5,0.75,0.89): one recipe each, the model loaded "
                             "and the samples encoded once")
    parser.add_argument("--out", required=True,
                        help="recipe JSON to write (use it as FITPRUNE_RECIPE); with several reductions a name "
                             "holding {reduction}, e.g. recipes/fitprune_{reduction}.json")
    parser.add_argument("--samples", type=int, default=None, help="use the first N questions (default: all)")
    parser.add_argument("--conv-mode", default=None,
                        help="upstream LLaVA checkpoints only (default llava_v1); a transformers checkpoint's "
                             "prompt is its processor's chat template")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--tolerance", type=float, default=0.01, help="bisection stops at this alpha interval")


def targets_of(reduction: str, out: str):
    """(reduction, output path) pairs from ``--reduction`` and ``--out``; ValueError naming the flag."""
    values = []
    for text in reduction.split(","):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < 1:
            raise ValueError(f"--reduction {reduction!r} is not valid: expected numbers strictly between 0 and 1, "
                             "comma-separated (e.g. 0.6 or 0.5,0.75,0.89)")
        values.append(value)
    if "{reduction}" in out:
        return [(value, out.replace("{reduction}", f"{value:g}")) for value in values]
    if len(values) > 1:
        raise ValueError(f"--out {out!r} is one file for {len(values)} reductions: name the files with "
                         "{reduction} in it, e.g. recipes/fitprune_{reduction}.json")
    return [(values[0], out)]


def run(args) -> int:
    import torch

    from ...runtime.fitprune import RecipeError
    from ..fitprune_fit.checkpoint import fit_recipes

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        targets = targets_of(args.reduction, args.out)
        recipes = fit_recipes(args.model_path, args.question_file, args.image_folder, targets, samples=args.samples,
                              conv_mode=args.conv_mode, device=device, model_base=args.model_base,
                              tolerance=args.tolerance)
    except (ValueError, OSError, RecipeError) as err:
        print(f"fitprune-fit: {err}", file=sys.stderr)
        return 2
    for (_, out), recipe in zip(targets, recipes):
        meta = recipe.metadata
        print(f"wrote {out}: alpha {meta.get('alpha')}, achieved reduction {meta.get('achieved_reduction')} "
              f"(target {meta.get('target_reduction')}), {meta.get('samples')} samples, {meta.get('wall_time_s')} s")
    print(f"use one with: FREEPRUNER_METHOD=fitprune FITPRUNE_RECIPE={targets[0][1]}")
    return 0
