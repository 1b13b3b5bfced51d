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
from .methods.base import CropRequest, Selection, SelectionContext, VisionMethod


@dataclass
class TowerRun:
    features: torch.Tensor        # (crops, tokens, dim) exactly as the tower returns them
    selections: List[Selection]   # one per crop
    vision_seconds: float         # the tower forward, hooks included
    select_seconds: float         # time in the hooks and in method.select


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


def grid_shape(tower) -> tuple:
    side = tower.config.image_size // tower.config.patch_size
    return side, side


def run_tower(tower, images: torch.Tensor, requests: Sequence[CropRequest], method: VisionMethod,
              narrow: Optional[Callable[[torch.Tensor], Sequence[CropRequest]]] = None) -> TowerRun:
    """Forward ``images`` through the tower, selecting tokens for each crop.
    ``narrow(features)``, when given, replaces the requests after the tower ran and
    before the selection (temporal video mode: candidates lose redundant patches)."""
    config = tower.config
    ctx = SelectionContext(
        requests=requests,
        grid=grid_shape(tower),
        num_prefix=1,
        num_layers=config.num_hidden_layers,
        feature_layer=feature_layer(config.num_hidden_layers, tower.select_layer),
    )
    sync(images)
    start = time.perf_counter()
    with AttentionCapture(tower.vision_tower, method, ctx) as capture:
        features = tower(images)
    sync(features)
    vision_seconds = time.perf_counter() - start
    start = time.perf_counter()
    if narrow is not None:
        ctx.requests = narrow(features)
    selections = method.select(ctx)
    sync(features)
    select_seconds = capture.seconds + time.perf_counter() - start
    return TowerRun(features, selections, vision_seconds, select_seconds)


def gather_kept(features: torch.Tensor, selection: Selection, with_cls: bool) -> torch.Tensor:
    """Kept rows of one crop's features, in raster order; [CLS] stays in front
    when the model feeds it (``mm_vision_select_feature == 'cls_patch'``)."""
    index = selection.indices.to(features.device)
    if with_cls:
        return torch.cat([features[:1], features[1:][index]], dim=0)
    return features[index]
