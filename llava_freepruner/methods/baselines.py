"""Reference selection methods: random, uniform grid and [CLS]-attention top-k.

Each keeps exactly ``min(budget, valid patches)`` tokens per crop, chosen
among the crop's valid patches and returned in raster order. A crop's choice
depends only on that crop's request (and, for ``random``, the seed): never on
the other crops of the batch.
"""

from __future__ import annotations

import hashlib
import math
from typing import List, Tuple

import torch

from .base import (
    ClsAttentionMethod, SelectionContext, Selection, VisionMethod, budget_of, make_selection, ranked,
)


# --- random -------------------------------------------------------------------


def crop_seed(seed: int, candidates: torch.Tensor, budget: int) -> int:
    """A 63-bit generator seed from the run seed and what is asked of the crop."""
    digest = hashlib.sha256()
    digest.update(f"{seed}:{budget}:".encode())
    digest.update(candidates.to(device="cpu", dtype=torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def random_tokens(candidates: torch.Tensor, budget: int, seed: int) -> torch.Tensor:
    """``budget`` candidates drawn uniformly without replacement (ascending)."""
    pool = torch.nonzero(candidates.cpu(), as_tuple=False).flatten()
    generator = torch.Generator().manual_seed(crop_seed(seed, candidates, budget))
    chosen = pool[torch.randperm(pool.numel(), generator=generator)[:budget]]
    return torch.sort(chosen).values.to(candidates.device)


class RandomTokens(VisionMethod):
    """Uniformly random patches; the same seed and crop request give the same choice."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def from_config(cls, config) -> "RandomTokens":
        return cls(config.seed)

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample in range(len(ctx.requests)):
            candidates = ctx.candidates(sample, "cpu")
            budget = budget_of(ctx, sample, candidates)
            selections.append(make_selection(random_tokens(candidates, budget, self.seed)))
        return selections


# --- grid -----------------------------------------------------------------------


def lattice(count: int, height: int, width: int) -> List[Tuple[float, float]]:
    """``count`` points spread evenly over a ``height`` x ``width`` box.

    Rows of points are as square as the box allows; row i holds
    floor((i+1)c/R) - floor(ic/R) points, each at the centre of an equal slice.
    """
    rows = min(height, max(1, round(math.sqrt(count * height / width))))
    while math.ceil(count / rows) > width:
        rows += 1
    points = []
    for i in range(rows):
        y = (i + 0.5) * height / rows - 0.5
        in_row = (i + 1) * count // rows - i * count // rows
        points += [(y, (j + 0.5) * width / in_row - 0.5) for j in range(in_row)]
    return points


def grid_tokens(candidates: torch.Tensor, budget: int, grid_width: int) -> torch.Tensor:
    """``budget`` candidates nearest to an even lattice over the candidates'
    bounding box (ascending). Where two lattice points want the same patch, the
    later one takes its nearest patch still free."""
    pool = torch.nonzero(candidates.cpu(), as_tuple=False).flatten()
    if budget >= pool.numel():
        return pool.to(candidates.device)
    rows, cols = pool // grid_width, pool % grid_width
    top, left = int(rows.min()), int(cols.min())
    points = torch.tensor(
        lattice(budget, int(rows.max()) - top + 1, int(cols.max()) - left + 1), dtype=torch.float64
    ) + torch.tensor([top, left], dtype=torch.float64)
    where = torch.stack([rows, cols], dim=1).double()
    distance = torch.cdist(points, where)              # (budget, pool)
    nearest = distance.argmin(dim=1)                   # argmin keeps the lowest index on ties
    taken = torch.zeros(pool.numel(), dtype=torch.bool)
    chosen = []
    for point, best in enumerate(nearest.tolist()):
        if taken[best]:
            best = int(distance[point].masked_fill(taken, math.inf).argmin())
        taken[best] = True
        chosen.append(best)
    return torch.sort(pool[chosen]).values.to(candidates.device)


class GridTokens(VisionMethod):
    """A uniform 2-D subsample of the valid patches (no attention needed)."""

    name = "grid"

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample in range(len(ctx.requests)):
            candidates = ctx.candidates(sample, "cpu")
            budget = budget_of(ctx, sample, candidates)
            selections.append(make_selection(grid_tokens(candidates, budget, ctx.grid[1])))
        return selections


# --- [CLS] attention top-k ---------------------------------------------------------


class ClsTopK(ClsAttentionMethod):
    """The patches the [CLS] query attends to most at the feature layer.

    Only the [CLS] query row of that layer's attention is computed.
    """

    name = "cls_topk"

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample, memo in enumerate(ctx.memo):
            scores = memo["cls_attention"]
            candidates = ctx.candidates(sample, scores.device)
            budget = budget_of(ctx, sample, candidates)
            selections.append(make_selection(ranked(scores, candidates)[:budget]))
        return selections
