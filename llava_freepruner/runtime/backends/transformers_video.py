"""Videos of transformers' LLaVA classes: the ``get_video_features`` patch.

The host's own tower, pooling and projector run with the capture attached;
every frame is one crop of the selection, with a budget counted in the tokens
the LLM sees (:mod:`llava_freepruner.runtime.video`). The features returned are the
host's, with each frame's kept tokens (and a merging method's rows, projected by
the host's projector) moved to the front of its cells; the positions kept in
each video are noted for the merge, where the image path's placeholder-mask and
decoder patches drop the rest. Methods that compare the embeddings the LLM
receives (DivPrune) read the host's own output on each cell.

| host class | frame tokens the LLM sees | selection |
|---|---|---|
| ``VideoLlavaModel`` | [CLS] + 16 x 16 patches (224 px) | on patches; [CLS] always kept |
| ``LlavaNextVideoModel`` | 12 x 12 cells, 2 x 2 average pooling | on cells (pooled attention) |
| ``LlavaOnevisionModel`` | 14 x 14 cells, bilinear; one newline per video | on cells (pooled attention); newline kept |
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import video
from ..capture import AttentionCapture
from ...config import ConfigError
from ..methods.base import CropRequest, SelectionContext, select
from ..methods.pooled import PooledMethod
from ..tower import Clock, feature_layer
from . import transformers_llava


@dataclass
class _VideoPlan:
    tower: torch.nn.Module
    layout: video.FrameLayout
    pool: Optional[torch.Tensor]      # (cells, patches) pooling weights; None: cells are patches


def _plan(model, pixels: torch.Tensor, call) -> _VideoPlan:
    vision = model.config.vision_config
    side = pixels.shape[-1] // vision.patch_size
    frames = pixels.shape[1]
    tower_prefix = transformers_llava._num_prefix(vision)
    if model.config.model_type == "video_llava":          # [CLS] and every patch go to the LLM
        return _VideoPlan(model.video_tower, video.FrameLayout(frames, (side, side), prefix=tower_prefix), None)
    strategy = call.get("vision_feature_select_strategy") or model.config.vision_feature_select_strategy
    fed_prefix = tower_prefix if strategy == "full" else tower_prefix - 1
    if fed_prefix != 0:
        raise ConfigError(f"vision_feature_select_strategy={strategy!r} with this tower feeds {side * side + fed_prefix} "
                          f"tokens per frame to the pooling; llava_freepruner follows the checkpoints' setting, which "
                          "feeds the patches only ('default' with a [CLS] tower, 'full' with SigLIP)")
    if model.config.model_type == "llava_next_video":
        if model.config.spatial_pool_mode != "average":
            raise ConfigError(f"spatial_pool_mode={model.config.spatial_pool_mode!r}: llava_freepruner scores the "
                              "cells of 'average' pooling only (the published LLaVA-NeXT-Video checkpoints)")
        pool, trailing = video.pool_matrix(model.vision_resampler, side * side), 0
    else:                                                  # OneVision: bilinear resampling, a newline per video
        pool, trailing = video.pool_matrix(model.apply_pooling, side * side), 1
    cells = math.isqrt(pool.shape[0])
    return _VideoPlan(model.vision_tower, video.FrameLayout(frames, (cells, cells), trailing=trailing), pool)


def _check_budget(config, layout: video.FrameLayout) -> None:
    if config.tokens is not None and config.tokens > layout.frame_tokens:
        raise ConfigError(
            f"FREEPRUNER_TOKENS={config.tokens} exceeds the {layout.frame_tokens} visual tokens of one video frame "
            f"of this model (for videos it counts per frame): expected 1..{layout.frame_tokens} (or FREEPRUNER_RATIO)."
        )


def _per_video(output, videos: int) -> torch.Tensor:
    """(videos, tokens, dim) from what the host returns: an output with ``pooler_output``
    (5.x), (features, frames) (4.57's Video-LLaVA) or one tensor per video (4.57's NeXT-Video).
    4.57's OneVision appends its newline later, outside: the frames' tokens come first either way."""
    features = transformers_llava.pooled_features(output)
    if isinstance(features, tuple) and len(features) == 2 and isinstance(features[1], int):
        features = features[0]
    if isinstance(features, (tuple, list)):
        features = torch.stack(list(features))
    return features.reshape(videos, -1, features.shape[-1])


def _with_features(output, packed: torch.Tensor):
    """``output`` with its features replaced by ``packed`` (as :func:`_per_video` returns them)."""
    features = transformers_llava.pooled_features(output)
    if hasattr(output, "pooler_output"):
        output.pooler_output = packed.reshape(features.shape)
        return output
    if isinstance(features, tuple) and len(features) == 2 and isinstance(features[1], int):
        return packed.reshape(features[0].shape), features[1]
    if isinstance(features, (tuple, list)):
        return type(features)(rows.reshape(f.shape) for rows, f in zip(packed, features))
    return packed.reshape(features.shape)


def describe(config, layout: video.FrameLayout) -> str:
    mode = config.video_mode + (f" mode, tau {config.tau:g}" if config.video_mode == "temporal" else " mode")
    return (f"freePruner: {config.vision_method} keeping {video.frame_budget(config, layout) + layout.prefix} of "
            f"{layout.frame_tokens} visual tokens per video frame ({mode}).")


def install(session, host) -> None:
    """The image backend's patches, and ``get_video_features`` on the classes that have it."""
    transformers_llava.install(session, host)
    cls = getattr(host, transformers_llava.HOST_CLASSES[host.__name__])
    if "get_video_features" in cls.__dict__:
        transformers_llava.patch(cls, "get_video_features", wrap_video_features(cls.get_video_features))


def uninstall() -> None:
    transformers_llava.uninstall()


def wrap_video_features(original):
    @functools.wraps(original)
    def get_video_features(self, *args, **kwargs):
        session = transformers_llava.current_session()
        if session is None or not session.active:
            return original(self, *args, **kwargs)
        config = session.config
        call = inspect.signature(original).bind(self, *args, **kwargs).arguments
        pixels = call["pixel_values_videos"] if "pixel_values_videos" in call else call["pixel_values"]   # 4.57 names
        layer = call.get("vision_feature_layer")
        layer = self.config.vision_feature_layer if layer is None else layer
        if not isinstance(layer, int):
            raise ConfigError(f"vision_feature_layer={layer!r}: llava_freepruner selects on one tower layer; "
                              "models that concatenate several layers' features are not supported.")
        plan = _plan(self, pixels, call)
        layout = plan.layout
        _check_budget(config, layout)
        videos = pixels.shape[0]
        requests = [CropRequest(video.frame_budget(config, layout))] * (videos * layout.frames)
        if session.vision is not None and session.vision.needs_instruction:
            transformers_llava.refuse_unservable(session, type(self), self.config)
            # every frame of a video is selected with the text after the video's placeholders
            texts = transformers_llava.instructions(self, "video", [layout.tokens] * videos)
            requests = [dataclasses.replace(r, instruction=texts[v]) for v in range(videos)
                        for r in requests[v * layout.frames:(v + 1) * layout.frames]]
        vision = self.config.vision_config
        ctx = SelectionContext(requests=requests, grid=layout.cells, num_prefix=transformers_llava._num_prefix(vision),
                               num_layers=vision.num_hidden_layers,
                               feature_layer=feature_layer(vision.num_hidden_layers, layer), device=pixels.device,
                               host_keeps_prefix=layout.prefix > 0)
        clock = Clock(session.stats is not None)
        clock.start(pixels)
        if session.vision is None:
            output, method, select_seconds = original(self, *args, **kwargs), None, 0.0
        else:
            session.say_once(describe(config, layout))
            method = session.vision if plan.pool is None else PooledMethod(session.vision, plan.pool)
            with AttentionCapture(plan.tower, method, ctx) as capture:
                output = original(self, *args, **kwargs)
            select_seconds = capture.seconds
        features = _per_video(output, videos)
        selections = redundant = None
        if method is not None:
            cells = torch.stack([layout.frame_cells(f) for f in features])      # (videos, frames, cells, dim)
            ctx.projected_patches = cells.flatten(0, 1)                          # what the LLM would see
            if config.video_mode == "temporal":
                redundant = torch.stack([video.temporal_redundancy(c, config.tau) for c in cells])
                ctx.requests = video.novel_requests(requests, redundant.flatten(0, 1))
            selections = select(method, ctx)
        share = 1000 * clock.stop(features) / videos

        def project(rows: torch.Tensor) -> torch.Tensor:
            return self.multi_modal_projector(rows.to(features.dtype)[None])[0]

        pending, packed = [], []
        for v in range(videos):
            if selections is None:
                keep = torch.arange(layout.tokens)
                record = {"kind": "video", "frames": layout.frames, "tokens_in": layout.tokens,
                          "tokens_out": layout.tokens}
            else:
                mine = selections[v * layout.frames:(v + 1) * layout.frames]
                features_v, keep = video.pack_frames(layout, features[v], mine, project)
                packed.append(features_v)
                record = video.video_record(layout, mine, None if redundant is None else redundant[v],
                                            config.video_mode, config.tau)
            record.update(vision_ms=round(share, 3), select_ms=round(1000 * select_seconds / videos, 3))
            pending.append((layout.tokens, keep, record))
            session.record(record)
        session.pending_videos = pending
        return output if selections is None else _with_features(output, torch.stack(packed))

    return get_video_features
