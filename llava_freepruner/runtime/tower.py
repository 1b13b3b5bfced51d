"""Run LLaVA's CLIP tower once with a selection method attached.

Model-facing but llava-agnostic: it needs only the tower object's documented
attributes (``vision_tower``, ``select_layer``, ``select_feature``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .capture import AttentionCapture
from .methods.base import CropRequest, Selection, SelectionContext, VisionMethod, select


@dataclass
class TowerRun:
    features: torch.Tensor        # (crops, tokens, dim) exactly as the tower returns them
    selections: List[Selection]   # one per crop
    vision_seconds: float         # the tower forward, hooks included
    select_seconds: float         # time in the hooks and in method.select
    projected: Optional[torch.Tensor] = None   # (crops, patches, dim_llm) when the method projected every patch


def feature_layer(num_layers: int, select_layer: int) -> int:
    """Index of the encoder layer whose output is ``hidden_states[select_layer]``."""
    layer = num_layers + select_layer if select_layer < 0 else select_layer - 1
    if not 0 <= layer < num_layers:
        raise ValueError(f"mm_vision_select_layer={select_layer} selects no encoder layer of a {num_layers}-layer tower")
    return layer


def sync(tensor: torch.Tensor) -> None:
    """Wait for the device, so host clocks measure finished work."""
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


class Clock:
    """Host time of a stretch of device work. It waits for the device at both
    ends, so only a run that records times (a stats file, the benchmark) makes
    one; an untimed clock reads 0 and never waits."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._start = 0.0

    def start(self, tensor: torch.Tensor) -> None:
        if self.enabled:
            sync(tensor)
            self._start = time.perf_counter()

    def stop(self, tensor: torch.Tensor) -> float:
        if not self.enabled:
            return 0.0
        sync(tensor)
        return time.perf_counter() - self._start


def grid_shape(tower) -> tuple:
    side = tower.config.image_size // tower.config.patch_size
    return side, side


def run_tower(
    tower, images: torch.Tensor, requests: Sequence[CropRequest], method: VisionMethod,
    projector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    narrow: Optional[Callable[[torch.Tensor], Sequence[CropRequest]]] = None,
    timed: bool = True,
) -> TowerRun:
    """Forward ``images`` through the tower, selecting tokens for each crop.
    ``projector`` is the model's (for methods that select on projected tokens);
    ``narrow(features)``, when given, replaces the requests after the tower ran and
    before the selection (temporal video mode: candidates lose redundant patches).
    ``timed=False`` leaves the clocks alone: no waiting for the device, times 0."""
    config = tower.config
    ctx = SelectionContext(
        requests=requests,
        grid=grid_shape(tower),
        num_prefix=1,
        num_layers=config.num_hidden_layers,
        feature_layer=feature_layer(config.num_hidden_layers, tower.select_layer),
        projector=projector,
        tower_name=getattr(tower, "vision_tower_name", None),
        device=images.device,
    )
    clock = Clock(timed)
    clock.start(images)
    with AttentionCapture(tower.vision_tower, method, ctx) as capture:
        features = tower(images)
    vision_seconds = clock.stop(features)
    ctx.output_dtype = features.dtype
    clock.start(features)
    if narrow is not None:
        ctx.requests = narrow(features)
    selections = select(method, ctx)
    select_seconds = capture.seconds + clock.stop(features)
    return TowerRun(features, selections, vision_seconds, select_seconds, ctx.projected_patches)


def gather_batch(features: torch.Tensor, selections: Sequence[Selection], with_cls: bool) -> Optional[torch.Tensor]:
    """:func:`gather_kept` for every crop at once, where all crops keep the same
    number of patches and of merged rows (else None): a fixed number of kernels
    whatever the batch size."""
    shapes = {(int(s.indices.numel()),) + tuple(None if rows is None else tuple(rows.shape)
                                               for rows in (s.prefix, s.merged)) for s in selections}
    if len(shapes) != 1:
        return None
    first = selections[0]
    index = torch.stack([s.indices for s in selections]).to(features.device)
    patches = features[:, 1:] if with_cls else features
    pieces = [patches.gather(1, index[:, :, None].expand(-1, -1, features.shape[2]))]
    if first.prefix is not None:
        pieces.insert(0, torch.stack([s.prefix for s in selections]).to(features))
    elif with_cls:
        pieces.insert(0, features[:, :1])
    if first.merged is not None:
        pieces.append(torch.stack([s.merged for s in selections]).to(features))
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


def gather_kept(features: torch.Tensor, selection: Selection, with_cls: bool) -> torch.Tensor:
    """Kept rows of one crop's features, in raster order; [CLS] stays in front
    when the model feeds it (``mm_vision_select_feature == 'cls_patch'``).

    A merging method's rows come along: its ``prefix`` in front (VisionZip's
    [CLS], which then stands for the model's own), its ``merged`` rows last."""
    index = selection.indices.to(features.device)
    patches = features[1:] if with_cls else features
    front = selection.prefix if selection.prefix is not None else features[:1] if with_cls else None
    pieces = [rows.to(features) for rows in (front,) if rows is not None] + [patches[index]]
    if selection.merged is not None:
        pieces.append(selection.merged.to(features))
    return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]


def gather_projected(run: TowerRun, crop: int, with_cls: bool, projector) -> torch.Tensor:
    """Like :func:`gather_kept` after the projector, for a method that projected
    every patch of the crop already (only [CLS], if fed, is projected here)."""
    selection = run.selections[crop]
    kept = run.projected[crop][selection.indices.to(run.projected.device)]
    if selection.prefix is not None or selection.merged is not None:
        raise ValueError("a method that projects every patch returns no merged rows")
    if with_cls:
        return torch.cat([projector(run.features[crop][:1]), kept], dim=0)
    return kept
