"""The model under test on ``--backend transformers``: transformers' own
``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` (the video
classes in ``hf_video``, the Qwen-VL classes in ``hf_qwen``).

Random weights are built from the same published shapes as upstream's
(``archs.hf_architecture``); pixels go through transformers' image processor.
Without a tokenizer the prompt is random text ids around as many image
placeholders as the model makes features for the image, so the host's own
placeholder check passes unpatched.
"""

from __future__ import annotations

import os

import torch

from . import hf_qwen, hf_video
from .archs import CLIP_IMAGE_PROCESSOR, HF_IMAGE_TOKEN_ID, QWEN_CHECKPOINTS, VIDEO_CHECKPOINTS, hf_architecture
from .model import PROMPT, BenchModel, Inputs, check_batch_size, randomize, random_prompt, sample_image

# mm_vision_select_feature (upstream) -> vision_feature_select_strategy (transformers)
_STRATEGIES = {"patch": "default", "cls_patch": "full"}
_MODEL_TYPES = ("llava", "llava_next")


def build_random(name: str, llm_layers, vision_layers, device: str, dtype: torch.dtype, seed: int = 0) -> BenchModel:
    """A transformers conversion named in ``archs.HF_CHECKPOINTS`` (or a video or Qwen-VL
    model), with random weights."""
    from transformers import CLIPVisionConfig, LlamaConfig

    if name in QWEN_CHECKPOINTS:
        return hf_qwen.build_random(name, llm_layers, vision_layers, device, dtype, seed)
    decoder, llava, vision = hf_architecture(name, llm_layers, vision_layers)
    if llava["mm_projector_type"] != "mlp2x_gelu":
        raise ValueError(f"--random-weights {name}: transformers' LLaVA projector is mlp2x_gelu, "
                         f"the architecture has {llava['mm_projector_type']}")
    common = dict(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**decoder),
                  image_token_index=HF_IMAGE_TOKEN_ID, projector_hidden_act="gelu",
                  vision_feature_layer=llava["mm_vision_select_layer"],
                  vision_feature_select_strategy=_STRATEGIES[llava["mm_vision_select_feature"]])
    if name in VIDEO_CHECKPOINTS:
        model = hf_video.build_random(name, common)
        processor = hf_video.frame_processor(vision["image_size"])
    elif llava["image_aspect_ratio"] == "anyres":
        from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor

        pinpoints = llava["image_grid_pinpoints"]
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(image_grid_pinpoints=pinpoints, **common))
        processor = LlavaNextImageProcessor(**CLIP_IMAGE_PROCESSOR, image_grid_pinpoints=pinpoints)
    else:
        from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration(LlavaConfig(**common))
        processor = CLIPImageProcessor(**CLIP_IMAGE_PROCESSOR)
    randomize(model, seed)
    model.to(device=device, dtype=dtype).eval()
    return BenchModel(model, processor, None, name, torch.device(device), dtype, backend="transformers")


def load_checkpoint(path: str, device: str, dtype: torch.dtype) -> BenchModel:
    """A transformers LLaVA or LLaVA-NeXT checkpoint directory, with its processor."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--model {path!r} is not a checkpoint directory (no config.json)")
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"--model {path!r} is a {model_type!r} checkpoint: --backend transformers "
                         f"expects one of {', '.join(_MODEL_TYPES)}")
    model_cls = LlavaForConditionalGeneration if model_type == "llava" else LlavaNextForConditionalGeneration
    model = model_cls.from_pretrained(path).to(device=device, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(path)
    return BenchModel(model, processor, processor.tokenizer, os.path.basename(os.path.normpath(path)),
                      torch.device(device), dtype, backend="transformers")


def make_inputs(bench: BenchModel, batch_size: int, text_tokens: int, video_frames: int = None) -> Inputs:
    """``batch_size`` copies of one picture and one prompt, through transformers' processor.

    With a tokenizer: a fixed question after ``<image>`` (the processor expands
    it). Without: ``text_tokens`` random ids around the image's placeholders.
    ``video_frames``: a clip of that many frames instead (video models only)."""
    if video_frames is not None:
        return hf_video.make_inputs(bench, batch_size, text_tokens, video_frames)
    if hf_qwen.is_qwen(bench.model):
        return hf_qwen.make_inputs(bench, batch_size, text_tokens)
    check_batch_size(batch_size)
    images = [sample_image()] * batch_size
    image_id = bench.model.config.image_token_id
    if bench.tokenizer is not None:
        prompt = f"USER: <image>\n{PROMPT} ASSISTANT:"
        encoded = bench.image_processor(images=images, text=[prompt] * batch_size, return_tensors="pt")
        ids = encoded["input_ids"]
    else:
        encoded = bench.image_processor(images, return_tensors="pt")
        placeholders = _features_per_image(bench.model, encoded)
        image = torch.full((placeholders,), image_id)
        ids = random_prompt(image_id, text_tokens, image).repeat(batch_size, 1)
    pixels = encoded["pixel_values"]
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    if "image_sizes" in encoded:
        kwargs["image_sizes"] = encoded["image_sizes"]
    kwargs = {key: value.to(bench.device) for key, value in kwargs.items()}
    kwargs["pixel_values"] = kwargs["pixel_values"].to(bench.dtype)
    crops = pixels.shape[0] * (pixels.shape[1] if pixels.dim() == 5 else 1)
    text = int((ids[0] != image_id).sum())
    return Inputs(kwargs["input_ids"], kwargs, text, crops)


def _features_per_image(model, encoded) -> int:
    """The features the model merges for the first image: what its placeholders must number."""
    pixels = encoded["pixel_values"][:1].to(model.device, model.dtype)
    extra = {"image_sizes": encoded["image_sizes"][:1].to(model.device)} if "image_sizes" in encoded else {}
    with torch.inference_mode():
        features = model.model.get_image_features(pixel_values=pixels, **extra)
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    return int(features[0].shape[0])
