"""``python -m llava_freepruner config``: show what the environment asks for."""

from __future__ import annotations

import dataclasses
import os
import sys

from ... import config as config_module


def add_arguments(parser) -> None:
    parser.add_argument("--tokens-per-image", type=int, default=576,
                        help="visual tokens per image to compute the kept count for (576: LLaVA-1.5)")


def run(args) -> int:
    try:
        config = config_module.from_env()
    except config_module.ConfigError as err:
        print(f"llava_freepruner: {err}", file=sys.stderr)
        return 2
    if config.llm_method == "fitprune":
        from ...runtime.fitprune import RecipeError, load_recipe

        try:
            recipe = load_recipe(config.fitprune_recipe)
        except RecipeError as err:
            print(f"llava_freepruner: FITPRUNE_RECIPE={config.fitprune_recipe!r} cannot be used: {err}", file=sys.stderr)
            return 2
        print(f"FitPrune recipe {recipe.name}: {recipe.num_layers} layers, {recipe.num_visual_tokens} visual tokens, "
              f"{recipe.alive_after_each_layer()[-1]} alive after the last layer")
    print(config_module.describe(config, args.tokens_per_image))
    for name, value in dataclasses.asdict(config).items():
        print(f"  {name:16} {value}")
    set_vars = sorted(k for k in os.environ if k.startswith(config_module.PREFIXES))
    print("  from variables   " + (", ".join(set_vars) if set_vars else "(none set: defaults)"))
    return 0
