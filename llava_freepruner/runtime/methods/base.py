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

    def valid_count(self, num_patches: int) -> int:
        """Patches that may be kept, counted once per request (``valid`` lives on the host)."""
        if self.valid is None:
            return num_patches
        if "_valid_count" not in self.__dict__:
            object.__setattr__(self, "_valid_count", int(self.valid.sum()))
        return self.__dict__["_valid_count"]


@dataclass(frozen=True)
class Selection:
    """Kept patch indices (ascending: raster order) and which of them are pivots.

    ``pivot_mask`` (bool, one flag per kept index; None: no pivots) stays on the
    device: reading :attr:`pivotal` waits for it, so only statistics and overlays do.

    A merging method adds rows that are no single patch: ``prefix`` goes before
    the kept patches, ``merged`` after them (grown from the patches ``merged_at``). Both hold feature-layer (pre-projector)
    rows, so the projector treats them like any token; None for selecting methods.
    """

    indices: torch.Tensor
    pivot_mask: Optional[torch.Tensor] = None
    prefix: Optional[torch.Tensor] = None
    merged: Optional[torch.Tensor] = None
    # The patch each merged row grew from (VisionZip's targets), ascending: a host that
    # keeps tokens at their own positions (Qwen-VL's M-RoPE) puts the row in its place.
    merged_at: Optional[torch.Tensor] = None

    @property
    def pivotal(self) -> torch.Tensor:
        """Indices of the pivotal patches (ascending)."""
        if self.pivot_mask is None:
            return self.indices[:0]
        return self.indices[self.pivot_mask]

    @property
    def num_tokens(self) -> int:
        """Tokens this crop feeds the LLM (prefix, kept patches, merged rows)."""
        extra = sum(int(rows.shape[0]) for rows in (self.prefix, self.merged) if rows is not None)
        return int(self.indices.numel()) + extra

    @property
    def num_pivotal(self) -> int:
        return 0 if self.pivot_mask is None else int(self.pivot_mask.sum())

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
    # What the method's observe() reduced the attention to, batched over crops.
    state: Dict[str, torch.Tensor] = field(default_factory=dict)
    # The host feeds the prefix tokens to the LLM itself, outside the crop budgets
    # (Video-LLaVA's video frames keep their [CLS]): a method must not add them again.
    host_keeps_prefix: bool = False
    # Output of the feature layer, prefix tokens included: (crops, tokens, dim);
    # filled by the capture for methods with ``needs_hidden``.
    hidden: Optional[torch.Tensor] = None
    # The model's projector (None where there is none, e.g. a bare ViT), and its
    # output on every patch once a method asked for it (see :meth:`projected`);
    # the video backend fills the latter with the host's own output on each cell.
    projector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    projected_patches: Optional[torch.Tensor] = None
    tower_name: Optional[str] = None   # the vision tower's checkpoint (where its CLIP text half lives)
    output_dtype: Optional[torch.dtype] = None   # dtype of the tower's output (what the projector receives)
    device: torch.device = torch.device("cpu")   # where the tower runs: selections are made there
    _masks: Dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def budgets(self) -> List[int]:
        """Tokens each crop keeps, at most its valid patches: known on the host
        (valid masks live there), so no selection waits for the device to count."""
        return [min(r.budget, valid) for r, valid in zip(self.requests, self.valid_counts())]

    def candidate_mask(self, device) -> Optional[torch.Tensor]:
        """(crops, patches) bool of the patches that may be kept; None when all may."""
        if all(r.valid is None for r in self.requests):
            return None
        key = (id(self.requests), str(device))      # the requests change in temporal video mode
        if key not in self._masks:
            every = torch.ones(self.num_patches, dtype=torch.bool)
            mask = torch.stack([every if r.valid is None else r.valid.bool() for r in self.requests])
            self._masks = {key: to_device(mask, device)}
        return self._masks[key]

    def valid_counts(self) -> List[int]:
        """Patches each crop may keep (host integers)."""
        return [r.valid_count(self.num_patches) for r in self.requests]

    def groups(self) -> List[Tuple[int, int, List[int]]]:
        """(budget, valid patches, crops) for each set of crops that share both:
        a method whose steps depend on those numbers runs once per group, batched."""
        found: Dict[Tuple[int, int], List[int]] = {}
        for crop, key in enumerate(zip(self.budgets(), self.valid_counts())):
            found.setdefault(key, []).append(crop)
        return [(budget, valid, crops) for (budget, valid), crops in found.items()]

    def rows_of(self, crops: List[int], device):
        """An index for the rows of a group's crops in (crops, ...) tensors (all rows: a slice)."""
        if len(crops) == len(self.requests):
            return slice(None)
        return to_device(torch.tensor(crops), device)

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
    """Head-mean attention of one encoder layer for every crop of a call, in fp32.

    Methods use only this interface, batched over crops (token indices are
    (crops, R) tensors); :class:`QueryKeyView` computes what is asked from
    queries and keys, :class:`MapView` reads a map the layer already made.
    """

    device: torch.device
    batch_size: int
    k: Optional[torch.Tensor] = None

    def rows(self, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention rows of every crop: (crops, R or tokens, tokens)."""
        raise NotImplementedError

    def received(self) -> torch.Tensor:
        """Attention each token receives from the others (self excluded): (crops, tokens)."""
        raise NotImplementedError

    def paid_to(self, columns: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention each token pays to the given (crops, C) tokens, optionally
        weighted per column: (crops, tokens)."""
        raise NotImplementedError

    def mean_keys(self) -> torch.Tensor:
        """The layer's keys averaged over heads: (crops, tokens, head_dim) fp32."""
        if self.k is None:
            raise RuntimeError("this attention view was made without the layer's keys")
        return self.k.mean(dim=1, dtype=torch.float32)


class QueryKeyView(AttentionView):
    """From queries and keys, (crops, heads, tokens, head_dim), q already scaled;
    both are used in fp32 (cast once, when first needed)."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor):
        self.q, self.k = q.float().contiguous(), k
        self.device, self.batch_size = q.device, q.shape[0]
        self._k32: Optional[torch.Tensor] = None

    @property
    def k32(self) -> torch.Tensor:
        if self._k32 is None:
            self._k32 = self.k.float().contiguous()
        return self._k32

    def rows(self, rows=None):
        return attention.head_mean_attention(self.q, self.k32, rows)

    def received(self):
        return attention.received_attention(self.q, self.k32)

    def paid_to(self, columns, weights=None):
        return attention.attention_to_columns(self.q, self.k32, columns, weights)


class MapView(AttentionView):
    """From the head-mean attention maps the layer computed anyway: (crops, tokens, tokens)
    fp32, and the layer's keys (crops, heads, tokens, head_dim)."""

    def __init__(self, maps: torch.Tensor, k: Optional[torch.Tensor] = None):
        self.maps, self.k = maps, k
        self.device, self.batch_size = maps.device, maps.shape[0]

    def rows(self, rows=None):
        if rows is None:
            return self.maps
        return self.maps.gather(1, rows[:, :, None].expand(-1, -1, self.maps.shape[2]))

    def received(self):
        return self.maps.sum(dim=1) - torch.diagonal(self.maps, dim1=1, dim2=2)

    def paid_to(self, columns, weights=None):
        return attention.weighted_columns(self.maps, columns, weights)


class VisionMethod:
    """Base of the vision-side methods: no attention needed, nothing observed.

    ``observe`` and ``select`` see every crop of the call at once and return
    without waiting for the device: budgets are host integers
    (:meth:`SelectionContext.budgets`), choices stay device tensors.
    """

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
        """Reduce one layer's attention into ``ctx.state`` on the spot."""

    def select(self, ctx: SelectionContext) -> List[Selection]:
        raise NotImplementedError


class ClsAttentionMethod(VisionMethod):
    """A method that reads the [CLS] query's attention at the feature layer,
    into ``ctx.state["cls_attention"]`` (crops, patches) (see :func:`cls_scores`)."""

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        return (feature_layer,)

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        ctx.state["cls_attention"] = cls_scores(view, ctx.num_prefix)


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device`` without waiting for the device's queue."""
    return tensor.to(device, non_blocking=True)


def descending(scores: torch.Tensor, candidates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(crops, patches) indices by descending score, candidates first (a
    (crops, patches) bool mask; None: all); ties keep the lower index first."""
    if candidates is not None:
        scores = scores.masked_fill(~candidates, float("-inf"))
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


PAST_EVERY_INDEX = torch.iinfo(torch.long).max


def raster_heads(order: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The first ``counts[c]`` entries of each row of ``order`` (crops, n) of
    patch indices, ascending, in one sort for all crops: (crops, max count), a
    crop's entries past its count filled with :data:`PAST_EVERY_INDEX`."""
    top = max(counts, default=0)
    head = order[:, :top]
    if min(counts, default=0) < top:
        rank = torch.arange(top, device=order.device)
        limit = to_device(torch.tensor(counts), order.device)
        head = torch.where(rank < limit[:, None], head, PAST_EVERY_INDEX)
    return torch.sort(head, dim=1).values


def per_crop(rows: torch.Tensor, counts: Sequence[int]) -> List[torch.Tensor]:
    """Views of the first ``counts[c]`` entries of each row."""
    return [rows[c, :count] for c, count in enumerate(counts)]


def keep_top(scores: torch.Tensor, ctx: SelectionContext) -> List[Selection]:
    """Each crop's budget of its highest-scoring candidates, in raster order."""
    budgets = ctx.budgets()
    kept = raster_heads(descending(scores, ctx.candidate_mask(scores.device)), budgets)
    return [Selection(indices) for indices in per_crop(kept, budgets)]


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of (crops, n, dim) ``x`` at (crops, m) indices: (crops, m, dim)."""
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


def host_indices(selections: Sequence[Selection]) -> List[torch.Tensor]:
    """Every selection's kept indices on the host, in one copy (one wait for the device)."""
    counts = [int(s.indices.numel()) for s in selections]
    return list(torch.cat([s.indices for s in selections]).cpu().split(counts))


def make_selection(indices: torch.Tensor, pivotal: Optional[torch.Tensor] = None, **extra_rows) -> Selection:
    """A selection of one crop from unsorted indices (and pivots among them)."""
    indices = torch.sort(indices.long()).values
    pivot_mask = None if pivotal is None else torch.isin(indices, pivotal)
    return Selection(indices=indices, pivot_mask=pivot_mask, **extra_rows)


def cls_scores(view: AttentionView, num_prefix: int) -> torch.Tensor:
    """Head-mean attention of the [CLS] query to every patch: (crops, num_patches).

    A tower without [CLS] (``num_prefix == 0``, SigLIP) has no such row; the
    attention each patch receives from all queries stands in for it."""
    if num_prefix == 0:
        return view.received()
    first = torch.zeros(view.batch_size, 1, dtype=torch.long, device=view.device)
    return view.rows(first)[:, 0, num_prefix:]


def keeps_everything(ctx: SelectionContext) -> bool:
    """Every crop keeps all its valid patches (ratio 1.0): nothing to choose."""
    return ctx.budgets() == ctx.valid_counts()


def select(method: VisionMethod, ctx: SelectionContext) -> List[Selection]:
    """``method.select``, or every valid patch when every crop keeps all of them
    (then the capture attached nothing, see :func:`keeps_everything`)."""
    if not keeps_everything(ctx):
        return method.select(ctx)
    every = torch.arange(ctx.num_patches, device=ctx.device)
    return [Selection(every if r.valid is None else to_device(torch.nonzero(r.valid).flatten(), ctx.device))
            for r in ctx.requests]
