"""freePruner (arXiv 2411.15446): pivotal tokens, then complementary tokens.

Stage 1 scores every patch by its *contribution degree* (the mean attention the
other tokens pay it, averaged over a band of middle layers) and keeps the IQR
outliers as pivots. Stage 2 ranks the remaining patches by their attention
relation to the pivots at the feature layer and fills the budget. Kept tokens
are returned unmerged, in raster order.

Every crop of a call is handled at once on the device: the pivots are the first
``pivot_counts`` of each crop's contribution ranking, only the rows of the
largest pivot cap are computed at the feature layer (padding rows weigh 0), and
one stable sort over "pivots first, then relation" fills each budget. Nothing
waits for the device. The spreading extension (``radius`` > 0) walks each
crop's ranking on the host instead.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

from .base import (
    AttentionView, SelectionContext, Selection, VisionMethod, descending, make_selection, per_crop, raster_heads, to_device,
)


def default_contribution_layers(num_layers: int, feature_layer: int) -> Tuple[int, ...]:
    """Layers floor(L/2) .. feature_layer-1 (12..21 on a 24-layer CLIP with f = 22).

    Shallow towers whose band would be empty fall back to the layer before f.
    """
    start = min(num_layers // 2, max(feature_layer - 1, 0))
    return tuple(range(start, max(feature_layer, start + 1)))


def pivot_counts(
    contribution: torch.Tensor,
    budgets: Sequence[int],
    candidates: Optional[torch.Tensor] = None,
    iqr_multiplier: float = 1.5,
    cap_fraction: float = 0.5,
) -> torch.Tensor:
    """How many pivots each crop has: (crops,) long, on the device.

    contribution: (crops, patches) contribution degree; candidates: (crops,
    patches) bool or None (all). Pivots are the candidates above Q3 + m * IQR
    of the crop's candidates, at most floor(cap * budget) of them (the
    highest), and at least the single highest one. The outliers are a prefix
    of the descending ranking, so a count says which they are.
    """
    values = contribution.float()
    if candidates is not None:
        values = values.masked_fill(~candidates, float("nan"))
    q1, q3 = (torch.nanquantile(values, q, dim=1) for q in (0.25, 0.75))
    outliers = (values > (q3 + iqr_multiplier * (q3 - q1))[:, None]).sum(dim=1)   # NaN compares False
    caps = [max(1, math.floor(cap_fraction * b)) for b in budgets]
    if len(set(caps)) == 1:         # one cap for all: no host-to-device copy
        return outliers.clamp(min=1, max=caps[0])
    return torch.minimum(outliers, to_device(torch.tensor(caps), values.device)).clamp_min(1)


def spread_top(ranking: torch.Tensor, count: int, grid_width: int, radius: int) -> torch.Tensor:
    """The first ``count`` of ``ranking``, skipping tokens within Chebyshev
    distance ``radius`` of one already taken; if one pass does not fill the
    count, the rest is taken in ranking order."""
    if radius <= 0 or count >= ranking.numel():
        return ranking[:count]
    taken: List[int] = []
    blocked = set()
    for idx in ranking.tolist():
        if len(taken) == count:
            break
        if idx in blocked:
            continue
        taken.append(idx)
        row, col = divmod(idx, grid_width)
        for dr in range(-radius, radius + 1):
            for dc in range(-radius, radius + 1):
                if 0 <= col + dc < grid_width:
                    blocked.add((row + dr) * grid_width + col + dc)
    if len(taken) < count:
        chosen = set(taken)
        taken += [i for i in ranking.tolist() if i not in chosen][: count - len(taken)]
    return torch.tensor(taken, dtype=torch.long, device=ranking.device)


def pivot_relation(view: AttentionView, pivots: torch.Tensor, weights: torch.Tensor,
                   num_prefix: int, direction: str) -> torch.Tensor:
    """Attention relation of every patch to its crop's pivots at one layer: (crops, patches).

    pivots: (crops, P) patch indices, ascending among the real ones; weights:
    (crops, P) 1.0 for a real pivot, 0.0 for padding. from_pivots: attention the
    pivots pay to j (only the pivots' query rows are computed); to_pivots:
    attention j pays to the pivots; both: their sum.
    """
    positions = pivots + num_prefix
    relation = 0
    if direction in ("from_pivots", "both"):
        relation = relation + (view.rows(positions) * weights[:, :, None]).sum(dim=1)[:, num_prefix:]
    if direction in ("to_pivots", "both"):
        relation = relation + view.paid_to(positions, weights)[:, num_prefix:]
    return relation


class FreePruner(VisionMethod):
    name = "freepruner"

    def __init__(
        self,
        layers: Optional[Tuple[int, ...]] = None,
        iqr_multiplier: float = 1.5,
        cap_fraction: float = 0.5,
        direction: str = "from_pivots",
        radius: int = 0,
    ):
        self.layers = layers
        self.iqr_multiplier = iqr_multiplier
        self.cap_fraction = cap_fraction
        self.direction = direction
        self.radius = radius

    @classmethod
    def from_config(cls, config) -> "FreePruner":
        return cls(config.layers, config.iqr, config.pivot_cap, config.direction, config.radius)

    def contribution_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        layers = self.layers or default_contribution_layers(num_layers, feature_layer)
        if max(layers) > feature_layer:
            raise ValueError(
                f"FREEPRUNER_LAYERS={','.join(map(str, layers))} includes layers after the feature "
                f"layer {feature_layer} of this {num_layers}-layer vision tower: accepted are 0..{feature_layer}."
            )
        return layers

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        return tuple(sorted(set(self.contribution_layers(num_layers, feature_layer)) | {feature_layer}))

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        band = self.contribution_layers(ctx.num_layers, ctx.feature_layer)
        state = ctx.state
        if layer in band:
            received = view.received()[:, ctx.num_prefix:] / ctx.num_patches
            state["contribution"] = state.get("contribution", 0) + received / len(band)
        if layer == ctx.feature_layer:
            budgets = ctx.budgets()
            candidates = ctx.candidate_mask(view.device)
            order = descending(state["contribution"], candidates)
            counts = pivot_counts(state["contribution"], budgets, candidates, self.iqr_multiplier, self.cap_fraction)
            # the first ``counts`` of the ranking, ascending, padded to the largest cap
            cap = max(max(1, math.floor(self.cap_fraction * b)) for b in budgets)
            rank = torch.arange(cap, device=order.device)
            pivots = torch.sort(order[:, :cap] + ctx.num_patches * (rank >= counts[:, None]), dim=1).values
            is_real = pivots < ctx.num_patches
            state["relation"] = pivot_relation(
                view, pivots % ctx.num_patches, is_real.float(), ctx.num_prefix, self.direction)
            # each patch's place in the ranking: the pivots are the places below their count
            places = torch.arange(order.shape[1], device=order.device).expand_as(order)
            state["is_pivot"] = torch.empty_like(order).scatter_(1, order, places) < counts[:, None]

    def select(self, ctx: SelectionContext) -> List[Selection]:
        state = ctx.state
        budgets = ctx.budgets()
        # candidates may have narrowed since the tower ran (temporal video mode):
        # pivots left outside them go, their relation still ranks the rest
        candidates = ctx.candidate_mask(state["relation"].device)
        is_pivot = state["is_pivot"] if candidates is None else state["is_pivot"] & candidates
        if self.radius > 0:
            return [self._spread(ctx, c, budget, is_pivot[c], candidates) for c, budget in enumerate(budgets)]
        order = descending(state["relation"].masked_fill(is_pivot, float("inf")), candidates)
        kept = raster_heads(order, budgets)
        flags = is_pivot.gather(1, kept.clamp(max=ctx.num_patches - 1))
        return [Selection(indices, pivot_mask) for indices, pivot_mask
                in zip(per_crop(kept, budgets), per_crop(flags, budgets))]

    def _spread(self, ctx: SelectionContext, crop: int, budget: int, is_pivot: torch.Tensor,
                candidates: Optional[torch.Tensor]) -> Selection:
        """The spreading extension for one crop: a walk over its ranking, on the host."""
        pivots = torch.nonzero(is_pivot).flatten()
        complement = ~is_pivot if candidates is None else candidates[crop] & ~is_pivot
        ranking = descending(ctx.state["relation"][crop:crop + 1], complement[None])[0][:int(complement.sum())]
        chosen = spread_top(ranking, max(budget - pivots.numel(), 0), ctx.grid[1], self.radius)
        return make_selection(torch.cat([pivots, chosen]), pivots) if budget else make_selection(pivots[:0])
