"""Reference selection methods: random, uniform grid and [CLS]-attention top-k.

Each keeps exactly ``min(budget, valid patches)`` tokens per crop, chosen
among the crop's valid patches and returned in raster order. A crop's choice
depends only on that crop's request (and, for ``random``, the seed): never on
the other crops of the batch.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import List, Optional, Tuple

import torch

from .base import ClsAttentionMethod, SelectionContext, Selection, VisionMethod, keep_top, per_crop, to_device


# --- random -------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def crop_key(seed: int, budget: int, valid: Optional[torch.Tensor]) -> int:
    """A 63-bit key from the run seed and what is asked of the crop (host only:
    ``valid`` masks live on the host)."""
    digest = hashlib.sha256(f"{seed}:{budget}:".encode())
    if valid is not None:
        digest.update(valid.to(dtype=torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hashed_scores(keys: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(crops,) int64 keys -> (crops, patches) pseudo-random scores in [0, 2^53): the
    splitmix64 finaliser of key + golden-ratio step x patch, computed on the keys'
    device in a fixed number of kernels; a crop's scores depend on its key only."""
    step = 0x9E3779B97F4A7C15 - (1 << 64)       # as a signed int64
    x = keys[:, None] + torch.arange(1, num_patches + 1, device=keys.device) * step
    x = (x ^ _shift_right(x, 30)) * (0xBF58476D1CE4E5B9 - (1 << 64))
    x = (x ^ _shift_right(x, 27)) * (0x94D049BB133111EB - (1 << 64))
    return _shift_right(x ^ _shift_right(x, 31), 11).double()


class RandomTokens(VisionMethod):
    """Uniformly random patches; the same seed and crop request give the same choice."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def from_config(cls, config) -> "RandomTokens":
        return cls(config.seed)

    def select(self, ctx: SelectionContext) -> List[Selection]:
        keys = torch.tensor([crop_key(self.seed, r.budget, r.valid) for r in ctx.requests])
        device = ctx.device
        return keep_top(hashed_scores(to_device(keys, device), ctx.num_patches), ctx)


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


@functools.lru_cache(maxsize=256)
def _grid_rows(requests: Tuple[Tuple[int, Optional[bytes]], ...], num_patches: int, grid_width: int) -> torch.Tensor:
    """(crops, max budget) grid choices of every crop, ascending, padded with
    ``num_patches``; made on the host once per distinct set of requests."""
    rows = torch.full((len(requests), max((b for b, _ in requests), default=0)), num_patches, dtype=torch.long)
    for crop, (budget, valid) in enumerate(requests):
        mask = torch.ones(num_patches, dtype=torch.bool) if valid is None else torch.frombuffer(
            bytearray(valid), dtype=torch.bool)
        rows[crop, :budget] = grid_tokens(mask, budget, grid_width)
    return rows


class GridTokens(VisionMethod):
    """A uniform 2-D subsample of the valid patches (no attention needed).

    The choice depends only on the requests, so it is made on the host, once per
    distinct set of requests, and reaches the device in one copy."""

    name = "grid"

    def select(self, ctx: SelectionContext) -> List[Selection]:
        budgets = ctx.budgets()
        requests = tuple((b, None if r.valid is None else r.valid.to(torch.bool).numpy().tobytes())
                         for b, r in zip(budgets, ctx.requests))
        rows = to_device(_grid_rows(requests, ctx.num_patches, ctx.grid[1]), ctx.device)
        return [Selection(indices) for indices in per_crop(rows, budgets)]


# --- [CLS] attention top-k ---------------------------------------------------------


class ClsTopK(ClsAttentionMethod):
    """The patches the [CLS] query attends to most at the feature layer.

    Only the [CLS] query row of that layer's attention is computed.
    """

    name = "cls_topk"

    def select(self, ctx: SelectionContext) -> List[Selection]:
        return keep_top(ctx.state["cls_attention"], ctx)
