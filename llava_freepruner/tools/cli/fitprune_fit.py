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
    parser.add_argument("--reduction", type=float, required=True,
                        help="fraction of the visual-token FLOPs in the LLM to remove, 0 < r < 1 (e.g. 0.6)")
    parser.add_argument("--out", required=True, help="recipe JSON to write (use it as FITPRUNE_RECIPE)")
    parser.add_argument("--samples", type=int, default=None, help="use the first N questions (default: all)")
    parser.add_argument("--conv-mode", default=None,
                        help="upstream LLaVA checkpoints only (default llava_v1); a transformers checkpoint's "
                             "prompt is its processor's chat template")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--tolerance", type=float, default=0.01, help="bisection stops at this alpha interval")


def run(args) -> int:
    import torch

    from ...runtime.fitprune import RecipeError
    from ..fitprune_fit.checkpoint import fit_recipe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        recipe = fit_recipe(
            args.model_path, args.question_file, args.image_folder, args.reduction, args.out,
            samples=args.samples, conv_mode=args.conv_mode, device=device, model_base=args.model_base,
            tolerance=args.tolerance,
        )
    except (ValueError, FileNotFoundError, RecipeError) as err:
        print(f"fitprune-fit: {err}", file=sys.stderr)
        return 2
    meta = recipe.metadata
    print(f"wrote {args.out}: alpha {meta.get('alpha')}, achieved reduction {meta.get('achieved_reduction')} "
          f"(target {meta.get('target_reduction')}), {meta.get('samples')} samples, {meta.get('wall_time_s')} s")
    print(f"use it with: FREEPRUNER_METHOD=fitprune FITPRUNE_RECIPE={args.out}")
    return 0
