"""FitPrune: recipes (per-layer deletions), the FLOPs model and the fitting rules.

The fitting command lives in :mod:`llava_freepruner.tools.fitprune_fit.fit` (it loads upstream llava, or
transformers' LLaVA classes through :mod:`llava_freepruner.tools.fitprune_fit.transformers_fit`).
"""

from ..budget import flops_reduction, layer_flops, reduction_from_counts, scale_deletions
from .recipes import Recipe, RecipeError, builtin_names, load_recipe

__all__ = ["Recipe", "RecipeError", "builtin_names", "load_recipe", "scale_deletions",
           "flops_reduction", "layer_flops", "reduction_from_counts"]
