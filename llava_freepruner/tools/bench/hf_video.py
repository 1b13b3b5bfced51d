"""Video rows of ``--backend transformers``: transformers' ``VideoLlavaForConditionalGeneration``
and ``LlavaNextVideoForConditionalGeneration`` with random weights, and a synthetic clip.

The shapes are the published checkpoints' (``archs.VIDEO_CHECKPOINTS``). Frames go
through a CLIP image processor one by one (transformers 5.x video processors need
torchvision, see ``hf_tiny.video_inputs``); the prompt is random text ids around as
many video placeholders as the model makes tokens for the clip.
"""

from __future__ import annotations

import numpy as np
import torch

from ...fixtures import hf_tiny
from .archs import CLIP_IMAGE_PROCESSOR, HF_VIDEO_TOKEN_IDS, VIDEO_CHECKPOINTS
from .model import BenchModel, Inputs, check_batch_size, random_prompt, sample_image


def build_random(name: str, common: dict) -> torch.nn.Module:
    """The video model ``name`` (a key of ``archs.VIDEO_CHECKPOINTS``) from the shared
    ``common`` config fields (vision and text configs, projector, feature layer)."""
    kind, _, _ = VIDEO_CHECKPOINTS[name]
    fields = dict(common, **HF_VIDEO_TOKEN_IDS[kind])
    fields.pop("image_token_index")
    if kind == "video_llava":
        from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

        return VideoLlavaForConditionalGeneration(VideoLlavaConfig(**fields))
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    from .archs import ARCHITECTURES

    pinpoints = ARCHITECTURES[VIDEO_CHECKPOINTS[name][1]]["image_grid_pinpoints"]
    return LlavaNextVideoForConditionalGeneration(LlavaNextVideoConfig(
        image_grid_pinpoints=pinpoints, spatial_pool_mode="average", spatial_pool_stride=2, **fields))


def frame_processor(image_size: int):
    """CLIP's resize, centre crop and normalisation at the tower's size (one frame at a time)."""
    from transformers import CLIPImageProcessor

    fields = dict(CLIP_IMAGE_PROCESSOR, size={"shortest_edge": image_size},
                  crop_size={"height": image_size, "width": image_size})
    return CLIPImageProcessor(**fields)


def sample_clip(frames: int, seed: int = 0) -> list:
    """``frames`` pictures of one scene: the bench picture with a bright square moving
    across it, so consecutive frames repeat most of their content (as a fixed camera)."""
    from PIL import Image

    base = np.asarray(sample_image(seed=seed))
    height, width = base.shape[:2]
    side = height // 4
    clip = []
    for f in range(frames):
        pixels = base.copy()
        left = int(f * (width - side) / max(frames - 1, 1))
        pixels[height // 3: height // 3 + side, left: left + side] = (250, 240, 40)
        clip.append(Image.fromarray(pixels))
    return clip


def make_inputs(bench: BenchModel, batch_size: int, text_tokens: int, frames: int) -> Inputs:
    """``batch_size`` copies of one ``frames``-frame clip and one random prompt."""
    check_batch_size(batch_size)
    if frames < 1:
        raise ValueError(f"--video {frames} is not valid: expected a number of frames >= 1")
    model = bench.model
    config = model.config
    clip = bench.image_processor(images=sample_clip(frames), return_tensors="pt")["pixel_values"]
    tokens = hf_tiny.video_tokens(model, frames)
    video = torch.full((tokens,), config.video_token_id)
    ids = random_prompt(min(config.video_token_id, config.image_token_id), text_tokens, video).repeat(batch_size, 1)
    kwargs = {"input_ids": ids.to(bench.device), "attention_mask": torch.ones_like(ids).to(bench.device),
              "pixel_values_videos": clip[None].repeat(batch_size, 1, 1, 1, 1).to(bench.device, bench.dtype)}
    return Inputs(kwargs["input_ids"], kwargs, int(ids.shape[1]) - tokens, batch_size * frames,
                  frames=frames, frame_tokens=tokens // frames)
