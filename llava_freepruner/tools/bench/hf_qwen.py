"""Qwen-VL rows of ``--backend transformers``: transformers' ``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration`` with random
weights at a published shape (``archs.QWEN_CHECKPOINTS``), and one picture per prompt.

The picture (``archs.QWEN_IMAGE_SIDE``: 448 px for 14 px patches, 512 px for 16 px) goes through
transformers' ``Qwen2VLImageProcessor`` at the checkpoints' pixel bounds (1,024 patches, 256
merged tokens). The prompt is random text ids around ``<|vision_start|>``, one
``<|image_pad|>`` per merged token and ``<|vision_end|>``, as the processor lays it out; on
transformers 5 it also carries the ``mm_token_type_ids`` the processor returns there (the
models' 3D positions need them).
"""

from __future__ import annotations

import inspect

import torch

from .archs import QWEN_CHECKPOINTS, QWEN_IMAGE_SIDE, QWEN_SPECIAL_FROM, QWEN_TOKEN_IDS, qwen_architecture
from .model import BenchModel, Inputs, check_batch_size, randomize, random_prompt, sample_image

_CLASSES = {"qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
            "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
            "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")}
# The published preprocessor_config.json bounds (pixels after resizing): Qwen2-VL / Qwen2.5-VL
# 56 x 56 .. 28 x 28 x 16384, Qwen3-VL 256 x 256 .. 2^24; Qwen3-VL normalises as SigLIP does.
_PIXELS = {"qwen2_vl": (3136, 12845056), "qwen2_5_vl": (3136, 12845056), "qwen3_vl": (65536, 16777216)}


def is_qwen(model) -> bool:
    return getattr(model.config, "model_type", None) in _CLASSES


def _rope(kind: str, text: dict) -> dict:
    """M-RoPE keywords of the text config: ``rope_scaling`` and ``rope_theta`` before
    transformers 5, one ``rope_parameters`` dict from 5 on (as ``hf_tiny_qwen``)."""
    import transformers

    text = dict(text)
    params = {"rope_type": "default", "mrope_section": text.pop("mrope_section")}
    if text.pop("mrope_interleaved", False):
        params["mrope_interleaved"] = True
    theta = text.pop("rope_theta")
    if int(transformers.__version__.split(".")[0]) >= 5:
        return dict(text, rope_parameters={**params, "rope_theta": theta})
    if kind != "qwen3_vl":
        params = {"type": "mrope", "mrope_section": params["mrope_section"]}
    return dict(text, rope_scaling=params, rope_theta=theta)


def build_random(name: str, llm_layers, vision_layers, device: str, dtype: torch.dtype, seed: int = 0) -> BenchModel:
    """A name of ``archs.QWEN_CHECKPOINTS`` with random weights, on ``device`` in ``dtype``."""
    import transformers

    kind, vision, text = qwen_architecture(name, llm_layers, vision_layers)
    config_name, model_name = _CLASSES[kind]
    config = getattr(transformers, config_name)(vision_config=vision, text_config=_rope(kind, text),
                                                tie_word_embeddings=False, **QWEN_TOKEN_IDS)
    config._attn_implementation = "sdpa"
    with torch.device(device):      # on a GPU: no 33 GB fp32 copy of an 8B model in host memory first
        model = getattr(transformers, model_name)(config)
    randomize(model, seed)
    model.to(device=device, dtype=dtype).eval()
    return BenchModel(model, image_processor(kind), None, name, torch.device(device), dtype, backend="transformers")


def image_processor(kind: str):
    """transformers' ``Qwen2VLImageProcessor`` (its PIL twin on transformers 5 without torchvision)
    at the checkpoints' patch size and pixel bounds."""
    import transformers

    from ...fixtures.hf_tiny_qwen import has_torchvision

    major = int(transformers.__version__.split(".")[0])
    cls = transformers.Qwen2VLImageProcessorPil if major >= 5 and not has_torchvision() else \
        transformers.Qwen2VLImageProcessor
    low, high = _PIXELS[kind]
    extra = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3) if kind == "qwen3_vl" else {}
    if major < 5:     # 4.57 keeps min/max_pixels, not ``size``
        extra.update(min_pixels=low, max_pixels=high)
    patch = 16 if kind == "qwen3_vl" else 14
    return cls(size={"shortest_edge": low, "longest_edge": high}, patch_size=patch, temporal_patch_size=2,
               merge_size=2, **extra)


def make_inputs(bench: BenchModel, batch_size: int, text_tokens: int) -> Inputs:
    """``batch_size`` copies of one picture and one random prompt around its placeholders."""
    check_batch_size(batch_size)
    model, config = bench.model, bench.model.config
    side = QWEN_IMAGE_SIDE[config.model_type]
    encoded = bench.image_processor(images=[sample_image(side, side)] * batch_size, return_tensors="pt")
    grid = encoded["image_grid_thw"]
    merge = config.vision_config.spatial_merge_size
    tokens = int(grid[0].prod()) // merge ** 2
    image = torch.tensor([config.vision_start_token_id] + [config.image_token_id] * tokens
                         + [config.vision_end_token_id])
    ids = random_prompt(QWEN_SPECIAL_FROM, text_tokens, image).repeat(batch_size, 1)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": encoded["pixel_values"],
              "image_grid_thw": grid}
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = (ids == config.image_token_id).int()
    kwargs = {key: value.to(bench.device) for key, value in kwargs.items()}
    kwargs["pixel_values"] = kwargs["pixel_values"].to(bench.dtype)
    return Inputs(kwargs["input_ids"], kwargs, int(ids.shape[1]) - tokens, batch_size)


__all__ = ["QWEN_CHECKPOINTS", "build_random", "image_processor", "is_qwen", "make_inputs"]
