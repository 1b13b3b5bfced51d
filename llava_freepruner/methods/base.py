"""What a vision-side selection method receives and returns.

A method sees the vision tower only through :class:`AttentionView` objects
(the attention of one encoder layer, captured by hooks) and returns one
:class:`Selection` per crop. It never imports ``llava``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import attention


@dataclass(frozen=True)
class CropRequest:
    """How many patch tokens to keep from one crop, and which may be chosen.

    valid: (num_patches,) bool, False for patches the model will discard anyway
    (LLaVA-NeXT unpadding); None means every patch is valid.
    """

    budget: int
    valid: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Selection:
    """Kept patch indices (ascending: raster order) and which of them are pivots."""

    indices: torch.Tensor
    pivotal: torch.Tensor

    @property
    def num_pivotal(self) -> int:
        return int(self.pivotal.numel())

    @property
    def num_complementary(self) -> int:
        return int(self.indices.numel()) - self.num_pivotal


@dataclass
class SelectionContext:
    """Per-forward bookkeeping shared by the capture hooks and the method."""

    requests: Sequence[CropRequest]
    grid: Tuple[int, int]            # patch rows, patch columns
    num_prefix: int                  # tokens before the patches ([CLS], registers)
    num_layers: int
    feature_layer: int               # encoder layer whose output is the feature map
    memo: List[Dict[str, torch.Tensor]] = field(default_factory=list)

    def __post_init__(self):
        if not self.memo:
            self.memo = [{} for _ in self.requests]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def candidates(self, sample: int, device) -> torch.Tensor:
        """Bool mask over patches that may be kept for this crop."""
        valid = self.requests[sample].valid
        if valid is None:
            return torch.ones(self.num_patches, dtype=torch.bool, device=device)
        return valid.to(device=device, dtype=torch.bool).clone()


class AttentionView:
    """Head-mean attention of one encoder layer for a batch of crops, in fp32.

    Methods use only this interface; :class:`QueryKeyView` computes what is asked
    from queries and keys, :class:`MapView` reads a map the layer already made.
    """

    device: torch.device
    batch_size: int

    def rows(self, sample: int, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention rows of one crop: (len(rows), tokens)."""
        raise NotImplementedError

    def received(self, sample: int) -> torch.Tensor:
        """Attention each token receives from the others (self excluded): (tokens,)."""
        raise NotImplementedError

    def paid_to(self, sample: int, columns: torch.Tensor) -> torch.Tensor:
        """Attention each token pays to the given tokens: (tokens,)."""
        raise NotImplementedError


class QueryKeyView(AttentionView):
    """From queries and keys, (batch, heads, tokens, head_dim), q already scaled."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor):
        self.q, self.k = q, k
        self.device, self.batch_size = q.device, q.shape[0]

    def rows(self, sample, rows=None):
        return attention.head_mean_attention(self.q[sample], self.k[sample], rows)

    def received(self, sample):
        return attention.received_attention(self.q[sample], self.k[sample])

    def paid_to(self, sample, columns):
        return attention.attention_to_columns(self.q[sample], self.k[sample], columns)


class MapView(AttentionView):
    """From head-mean attention maps the layer computed anyway: (batch, tokens, tokens) fp32."""

    def __init__(self, maps: torch.Tensor):
        self.maps = maps
        self.device, self.batch_size = maps.device, maps.shape[0]

    def rows(self, sample, rows=None):
        return self.maps[sample] if rows is None else self.maps[sample][rows]

    def received(self, sample):
        a = self.maps[sample]
        return a.sum(dim=0) - torch.diagonal(a)

    def paid_to(self, sample, columns):
        return self.maps[sample][:, columns].sum(dim=1)


class VisionMethod:
    """Base of the vision-side methods: no attention needed, nothing observed."""

    name = ""

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        """Encoder layers whose attention :meth:`observe` must see, ascending."""
        return ()

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        """Reduce one layer's attention into ``ctx.memo`` on the spot."""

    def select(self, ctx: SelectionContext) -> List[Selection]:
        raise NotImplementedError


def ranked(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidate indices by descending score; ties keep the lower index first."""
    idx = torch.nonzero(candidates, as_tuple=False).flatten()
    order = torch.sort(scores[idx], descending=True, stable=True).indices
    return idx[order]


def make_selection(indices: torch.Tensor, pivotal: Optional[torch.Tensor] = None) -> Selection:
    indices = torch.sort(indices.long()).values
    if pivotal is None:
        pivotal = indices.new_empty(0)
    return Selection(indices=indices, pivotal=torch.sort(pivotal.long()).values)
