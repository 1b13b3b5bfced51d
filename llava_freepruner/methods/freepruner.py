"""freePruner (arXiv 2411.15446): pivotal tokens, then complementary tokens.

Stage 1 scores every patch by its *contribution degree* (the mean attention the
other tokens pay it, averaged over a band of middle layers) and keeps the IQR
outliers as pivots. Stage 2 ranks the remaining patches by their attention
relation to the pivots at the feature layer and fills the budget. Kept tokens
are returned unmerged, in raster order.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .base import AttentionView, SelectionContext, Selection, VisionMethod, make_selection, ranked


def default_contribution_layers(num_layers: int, feature_layer: int) -> Tuple[int, ...]:
    """Layers floor(L/2) .. feature_layer-1 (12..21 on a 24-layer CLIP with f = 22).

    Shallow towers whose band would be empty fall back to the layer before f.
    """
    start = min(num_layers // 2, max(feature_layer - 1, 0))
    return tuple(range(start, max(feature_layer, start + 1)))


def pivotal_tokens(
    contribution: torch.Tensor,
    budget: int,
    candidates: torch.Tensor,
    iqr_multiplier: float = 1.5,
    cap_fraction: float = 0.5,
) -> torch.Tensor:
    """Indices of the pivotal patches (ascending).

    contribution: (num_patches,) contribution degree; candidates: bool mask.
    Pivots are the candidates above Q3 + m * IQR, at most floor(cap * budget)
    of them (the highest), and at least the single highest one.
    """
    order = ranked(contribution, candidates)
    values = contribution[order].float()
    # dtype given: a host may leave torch's default dtype at float16 (see the test)
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype, device=values.device))
    outliers = order[values > q3 + iqr_multiplier * (q3 - q1)]
    cap = max(1, math.floor(cap_fraction * budget))
    pivots = outliers[:cap] if outliers.numel() else order[:1]
    return torch.sort(pivots).values


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


def complementary_tokens(
    relation: torch.Tensor,
    count: int,
    candidates: torch.Tensor,
    grid_width: int,
    radius: int = 0,
) -> torch.Tensor:
    """The ``count`` candidates with the strongest relation to the pivots (ascending)."""
    if count <= 0:
        return relation.new_empty(0, dtype=torch.long)
    chosen = spread_top(ranked(relation, candidates), count, grid_width, radius)
    return torch.sort(chosen).values


def pivot_relation(view: AttentionView, sample: int, pivots: torch.Tensor, num_prefix: int, direction: str) -> torch.Tensor:
    """Attention relation of every patch to the pivots at one layer: (num_patches,).

    from_pivots: attention the pivots pay to j (only the pivots' query rows are
    computed); to_pivots: attention j pays to the pivots; both: their sum.
    """
    positions = pivots + num_prefix
    relation = 0
    if direction in ("from_pivots", "both"):
        relation = relation + view.rows(sample, positions).sum(dim=0)[num_prefix:]
    if direction in ("to_pivots", "both"):
        relation = relation + view.paid_to(sample, positions)[num_prefix:]
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
        for sample, memo in enumerate(ctx.memo):
            if layer in band:
                received = view.received(sample)[ctx.num_prefix:] / ctx.num_patches
                memo["contribution"] = memo.get("contribution", 0) + received / len(band)
            if layer == ctx.feature_layer:
                candidates = ctx.candidates(sample, view.device)
                if ctx.requests[sample].budget == 0 or not candidates.any():
                    memo["pivots"] = candidates.new_empty(0, dtype=torch.long)
                    continue
                pivots = pivotal_tokens(
                    memo["contribution"], ctx.requests[sample].budget, candidates,
                    self.iqr_multiplier, self.cap_fraction,
                )
                memo["pivots"] = pivots
                memo["relation"] = pivot_relation(view, sample, pivots, ctx.num_prefix, self.direction)

    def select(self, ctx: SelectionContext) -> List[Selection]:
        selections = []
        for sample, memo in enumerate(ctx.memo):
            pivots = memo["pivots"]
            if pivots.numel() == 0:     # nothing to keep from this crop
                selections.append(make_selection(pivots))
                continue
            candidates = ctx.candidates(sample, pivots.device)
            budget = min(ctx.requests[sample].budget, int(candidates.sum()))
            candidates[pivots] = False
            complement = complementary_tokens(
                memo["relation"], budget - pivots.numel(), candidates, ctx.grid[1], self.radius
            )
            selections.append(make_selection(torch.cat([pivots, complement]), pivots))
        return selections
