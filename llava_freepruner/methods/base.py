"""What a vision-side selection method receives and returns.

A method sees the vision tower only through :class:`AttentionView` objects
(the attention of one encoder layer, captured by hooks) and returns one
:class:`Selection` per crop. It never imports ``llava``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    instruction: Optional[str] = None    # the prompt's text, for text-conditioned methods


@dataclass(frozen=True)
class Selection:
    """Kept patch indices (ascending: raster order) and which of them are pivots.

    A merging method adds rows that are no single patch: ``prefix`` goes before
    the kept patches, ``merged`` after them. Both hold feature-layer (pre-projector)
    rows, so the projector treats them like any token; None for selecting methods.
    """

    indices: torch.Tensor
    pivotal: torch.Tensor
    prefix: Optional[torch.Tensor] = None
    merged: Optional[torch.Tensor] = None

    @property
    def num_tokens(self) -> int:
        """Tokens this crop feeds the LLM (prefix, kept patches, merged rows)."""
        extra = sum(int(rows.shape[0]) for rows in (self.prefix, self.merged) if rows is not None)
        return int(self.indices.numel()) + extra

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
    # Output of the feature layer, prefix tokens included: (crops, tokens, dim);
    # filled by the capture for methods with ``needs_hidden``.
    hidden: Optional[torch.Tensor] = None
    # The model's projector (None where there is none, e.g. a bare ViT), and its
    # output on every patch once a method asked for it (see :meth:`projected`).
    projector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    projected_patches: Optional[torch.Tensor] = None
    tower_name: Optional[str] = None   # the vision tower's checkpoint (where its CLIP text half lives)
    output_dtype: Optional[torch.dtype] = None   # dtype of the tower's output (what the projector receives)

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

    def patches(self) -> torch.Tensor:
        """Feature-layer patch rows of every crop, prefix dropped: (crops, patches, dim)."""
        if self.hidden is None:
            raise RuntimeError("this method reads the feature layer's output: give it needs_hidden = True")
        return self.hidden[:, self.num_prefix:]

    def projected(self) -> torch.Tensor:
        """Every patch after the model's projector, computed once per forward:
        (crops, patches, dim_llm). Without a projector: the feature-layer patches."""
        if self.projector is None:
            return self.patches()
        if self.projected_patches is None:
            self.projected_patches = self.projector(self.patches().to(self.output_dtype))
        return self.projected_patches


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

    def mean_keys(self, sample: int) -> torch.Tensor:
        """The layer's keys averaged over heads: (tokens, head_dim) fp32."""
        if getattr(self, "k", None) is None:
            raise RuntimeError("this attention view was made without the layer's keys")
        return self.k[sample].float().mean(dim=0)


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
    """From head-mean attention maps the layer computed anyway: (batch, tokens, tokens) fp32,
    and the layer's keys (batch, heads, tokens, head_dim)."""

    def __init__(self, maps: torch.Tensor, k: Optional[torch.Tensor] = None):
        self.maps, self.k = maps, k
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
    needs_hidden = False        # reads the feature layer's output (ctx.hidden) in select
    needs_instruction = False   # reads CropRequest.instruction (text-conditioned)

    @classmethod
    def from_config(cls, config) -> "VisionMethod":
        """A method without knobs; methods with knobs read theirs from ``config``."""
        return cls()

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        """Encoder layers whose attention :meth:`observe` must see, ascending."""
        return ()

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        """Reduce one layer's attention into ``ctx.memo`` on the spot."""

    def select(self, ctx: SelectionContext) -> List[Selection]:
        raise NotImplementedError


class ClsAttentionMethod(VisionMethod):
    """A method that reads the [CLS] query's attention at the feature layer,
    into ``memo["cls_attention"]`` (see :func:`cls_scores`)."""

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        return (feature_layer,)

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        for sample, memo in enumerate(ctx.memo):
            memo["cls_attention"] = cls_scores(view, sample, ctx.num_prefix)


def ranked(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Candidate indices by descending score; ties keep the lower index first."""
    idx = torch.nonzero(candidates, as_tuple=False).flatten()
    order = torch.sort(scores[idx], descending=True, stable=True).indices
    return idx[order]


def make_selection(indices: torch.Tensor, pivotal: Optional[torch.Tensor] = None, **extra_rows) -> Selection:
    indices = torch.sort(indices.long()).values
    if pivotal is None:
        pivotal = indices.new_empty(0)
    return Selection(indices=indices, pivotal=torch.sort(pivotal.long()).values, **extra_rows)


def cls_scores(view: AttentionView, sample: int, num_prefix: int) -> torch.Tensor:
    """Head-mean attention of the [CLS] query to every patch: (num_patches,).

    A tower without [CLS] (``num_prefix == 0``, SigLIP) has no such row; the
    attention each patch receives from all queries stands in for it."""
    if num_prefix == 0:
        return view.received(sample)
    first = torch.zeros(1, dtype=torch.long, device=view.device)
    return view.rows(sample, first)[0, num_prefix:]


def budget_of(ctx: SelectionContext, sample: int, candidates: torch.Tensor) -> int:
    """The crop's budget, at most its number of candidates."""
    return min(ctx.requests[sample].budget, int(candidates.sum()))
