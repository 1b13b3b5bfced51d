"""Selection on pooled cells, for models that pool patches before the LLM.

LLaVA-NeXT-Video averages 2x2 patches and LLaVA-OneVision resamples its video
frames bilinearly, so the LLM sees cells, not patches. A method asked to keep
round(r x cells) then picks cells; it reads their attention through
:class:`PooledView`, which pools the tower's patch attention with the model's
own pooling weights ``P`` (cells x patches, rows summing to 1):

- as a query, a cell attends like the weighted mean of its patches (rows of ``P``);
- as a key, a cell receives what its patches receive, each patch's share split
  over the cells that use it in proportion to the weights (columns of ``P``,
  normalised), so every query row still sums to one.

A cell's key (:meth:`PooledView.mean_keys`) and its feature-layer feature (what a
method reads through ``SelectionContext.patches``) are the weighted means of its
patches' (rows of ``P``). Prefix tokens ([CLS]) pass through unchanged. Any method
works unchanged on the cell grid through :class:`PooledMethod`.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .base import AttentionView, MapView, Selection, SelectionContext, VisionMethod


def _with_prefix(weights: torch.Tensor, num_prefix: int) -> torch.Tensor:
    cells, patches = weights.shape
    out = weights.new_zeros(num_prefix + cells, num_prefix + patches)
    out[:num_prefix, :num_prefix] = torch.eye(num_prefix)
    out[num_prefix:, num_prefix:] = weights
    return out


class _PooledMaps(AttentionView):
    """An attention view answered from one pooled map per crop, made when first asked (``_pool``)."""

    _maps: Optional[MapView] = None

    def _pool(self) -> torch.Tensor:
        raise NotImplementedError

    def _view(self) -> MapView:
        if self._maps is None:
            self._maps = MapView(self._pool())
        return self._maps

    def rows(self, rows=None):
        return self._view().rows(rows)

    def received(self):
        return self._view().received()

    def paid_to(self, columns, weights=None):
        return self._view().paid_to(columns, weights)


class PooledView(_PooledMaps):
    """Head-mean attention between prefix tokens and pooled cells, for every crop; made when first asked."""

    def __init__(self, base: AttentionView, pool: torch.Tensor, num_prefix: int):
        self.base = base
        self.device, self.batch_size = base.device, base.batch_size
        pool = pool.to(base.device)
        self.query = _with_prefix(pool, num_prefix)
        self.key = _with_prefix(pool / pool.sum(dim=0, keepdim=True).clamp_min(1e-12), num_prefix)

    def _pool(self) -> torch.Tensor:
        return self.query @ self.base.rows() @ self.key.T

    def mean_keys(self):
        return self.query @ self.base.mean_keys()


class UnitPooledView(_PooledMaps):
    """:class:`PooledView` for cells of ``unit`` consecutive tokens each with equal
    weights and no prefix (Qwen-VL's 2 x 2 merge units, stored as four consecutive
    rows): a reshape and a mean/sum instead of the pooling matmuls."""

    def __init__(self, base: AttentionView, unit: int):
        self.base, self.unit = base, unit
        self.device, self.batch_size = base.device, base.batch_size

    def _pool(self) -> torch.Tensor:
        maps = self.base.rows()
        crops, tokens = maps.shape[:2]
        cells = tokens // self.unit
        return maps.view(crops, cells, self.unit, cells, self.unit).mean(dim=2).sum(dim=3)

    def mean_keys(self):
        keys = self.base.mean_keys()
        return keys.view(keys.shape[0], -1, self.unit, keys.shape[-1]).mean(dim=2)


class PooledMethod(VisionMethod):
    """``method`` selecting cells: it observes :class:`PooledView` s of the tower's
    attention (:class:`UnitPooledView` s with ``unit``) and a context whose grid is
    the cell grid, and whose feature-layer output (``ctx.hidden``) is pooled to the
    cells before it selects (``pool_hidden=False``: the host fills it per cell)."""

    def __init__(self, method: VisionMethod, pool: Optional[torch.Tensor] = None, unit: Optional[int] = None,
                 pool_hidden: bool = True):
        if (pool is None) == (unit is None):
            raise ValueError("PooledMethod pools with a weight matrix or a unit size: give exactly one")
        self.method = method
        self.pool, self.unit = pool, unit
        self.pool_hidden = pool_hidden
        self.name = method.name
        self.needs_hidden = method.needs_hidden
        self.needs_instruction = method.needs_instruction

    def attention_layers(self, num_layers: int, feature_layer: int) -> Tuple[int, ...]:
        return self.method.attention_layers(num_layers, feature_layer)

    def observe(self, layer: int, view: AttentionView, ctx: SelectionContext) -> None:
        pooled = UnitPooledView(view, self.unit) if self.unit else PooledView(view, self.pool, ctx.num_prefix)
        self.method.observe(layer, pooled, ctx)

    def select(self, ctx: SelectionContext) -> List[Selection]:
        if ctx.hidden is not None and self.pool_hidden:
            weights = _with_prefix(self.pool.to(ctx.hidden.device), ctx.num_prefix)
            ctx.hidden = (weights @ ctx.hidden.float()).to(ctx.hidden.dtype)
        return self.method.select(ctx)
