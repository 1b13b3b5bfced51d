"""Selection-quality proxies: pure functions of features, saliency and the kept set.

``kept`` is always a 1-D tensor of patch indices; ``features`` is (N, D), one
row per patch (no [CLS]). None of these involve an LLM: they say what
information about the image survives, not what a model answers.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch.nn import functional as F


def patch_saliency(saliency_map: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Mean of an (H, W) saliency map over each patch cell, raster order: (rows * cols,)."""
    rows, cols = grid
    height, width = saliency_map.shape
    if height % rows or width % cols:
        raise ValueError(f"saliency map {height}x{width} does not split into a {rows}x{cols} patch grid")
    pooled = F.avg_pool2d(saliency_map[None, None].float(), (height // rows, width // cols))
    return pooled.flatten()


def saliency_kept(saliency: torch.Tensor, kept: torch.Tensor) -> float:
    """Fraction of the total saliency mass that lies on kept patches.
    A uniformly random subset of K of N patches keeps K/N on average."""
    return float(saliency[kept].sum() / saliency.sum())


def _dropped(num: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(num, dtype=torch.bool)
    mask[kept] = False
    return mask


def coverage(features: torch.Tensor, kept: torch.Tensor) -> float:
    """Mean over dropped patches of the best cosine similarity to a kept patch (1.0 if none dropped)."""
    dropped = _dropped(features.shape[0], kept)
    if not dropped.any():
        return 1.0
    unit = F.normalize(features.float(), dim=-1)
    similarity = unit[dropped] @ unit[kept].T
    return float(similarity.max(dim=1).values.mean())


def reconstruction_error(features: torch.Tensor, kept: torch.Tensor) -> float:
    """Replace every patch by its nearest kept patch (Euclidean) and return the
    squared error over the feature variance: sum ||x_i - x_nn(i)||^2 / sum ||x_i - mean||^2.
    0 = nothing lost; keeping only the token closest to the mean gives about 1."""
    x = features.float()
    nearest = torch.cdist(x, x[kept], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    return float((nearest ** 2).sum() / ((x - x.mean(dim=0)) ** 2).sum())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors."""
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))
