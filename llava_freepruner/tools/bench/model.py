"""The model under test: a real checkpoint, or a named architecture with random weights.

This module builds upstream ``llava`` model objects (``--backend upstream``) and
holds what every backend shares; ``hf_model`` builds transformers' own classes.
Either way the benchmark runs the host's real ``model.generate`` path through
the plugin's patches.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .archs import CLIP_IMAGE_PROCESSOR, architecture
from .host import HostParts, parts

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BenchModel:
    model: Any                 # LlavaLlamaForCausalLM (or another LlavaMetaForCausalLM), or transformers' class
    image_processor: Any       # transformers backend with a checkpoint: its whole processor
    tokenizer: Any             # None for random weights: prompts are random token ids
    name: str
    device: torch.device
    dtype: torch.dtype
    backend: str = "upstream"

    @property
    def parts(self) -> HostParts:
        return parts(self.backend, self.model)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not supported: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """N(0, 0.02) weights, unit norms, zero biases: activations stay in range.

    Drawn where the weights live, so a 7B model on a GPU takes seconds, not minutes."""
    generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, 0.02, generator=generator)


@contextlib.contextmanager
def _created_on(device: str, dtype: torch.dtype):
    """New modules get their parameters on ``device`` in ``dtype`` (no fp32 CPU copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_random(name: str, llm_layers: Optional[int], vision_layers: Optional[int],
                 device: str, dtype: torch.dtype, seed: int = 0) -> BenchModel:
    """A named architecture with random weights, built in-process from its config."""
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    llm_fields, vision_fields = architecture(name, llm_layers, vision_layers)
    vision_config = CLIPVisionConfig(**vision_fields)
    tower_name = llm_fields["mm_vision_tower"]
    unfreeze = llm_fields.pop("unfreeze_mm_vision_tower", False)
    with tempfile.TemporaryDirectory(prefix="bench-clip-config-") as config_dir, _created_on(device, dtype):
        # Upstream reads the tower's config from mm_vision_tower while building
        # the model: point it at a local copy of the config (no weights, no hub).
        vision_config.save_pretrained(config_dir)
        config = LlavaConfig(**dict(llm_fields, mm_vision_tower=config_dir))
        model = LlavaLlamaForCausalLM(config)
        vision_model = CLIPVisionModel(vision_config).requires_grad_(False)
    config.mm_vision_tower = tower_name
    if unfreeze:
        config.unfreeze_mm_vision_tower = True
    tower = model.get_vision_tower()
    tower.vision_tower = vision_model
    tower.vision_tower_name = tower_name
    tower.image_processor = CLIPImageProcessor(**CLIP_IMAGE_PROCESSOR)
    tower.is_loaded = True
    randomize(model, seed)
    model.to(device=device, dtype=dtype).eval()
    return BenchModel(model, tower.image_processor, None, name, torch.device(device), dtype)


def load_checkpoint(path: str, device: str, dtype: torch.dtype, quant: str = "none") -> BenchModel:
    """A LLaVA checkpoint directory, loaded by upstream ``load_pretrained_model``
    (``quant``: ``none``, or its ``8bit`` / ``4bit`` loading, which keeps the dtypes it chose)."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    from .quant import loader_flags

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"--model {path!r} is not a checkpoint directory (no config.json)")
    name = get_model_name_from_path(path)
    flags = loader_flags(quant)
    tokenizer, model, image_processor, _ = load_pretrained_model(path, None, name, device=device, **flags)
    if not any(flags.values()):     # a quantized model cannot be moved or cast
        model.to(device=device, dtype=dtype)
    model.eval()
    return BenchModel(model, image_processor, tokenizer, name, torch.device(device), dtype)


def sample_image(width: int = 640, height: int = 480, seed: int = 0):
    """A deterministic RGB picture: smooth gradients plus texture."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


PROMPT = "Describe this image in detail. What objects are there, and what are they doing?"


def prompt_ids(bench: BenchModel, text_tokens: int, seed: int = 0) -> torch.Tensor:
    """(1, T) prompt ids holding one image placeholder (IMAGE_TOKEN_INDEX).

    With a tokenizer: a fixed question in the vicuna_v1 template. Without
    (random weights): ``text_tokens`` random ids, BOS first, image after the
    first quarter, like the template's layout.
    """
    from llava.constants import IMAGE_TOKEN_INDEX

    if bench.tokenizer is not None:
        from llava.mm_utils import tokenizer_image_token

        prompt = ("A chat between a curious human and an artificial intelligence assistant. "
                  f"USER: <image>\n{PROMPT} ASSISTANT:")
        ids = tokenizer_image_token(prompt, bench.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        return ids.unsqueeze(0)
    return random_prompt(bench.model.config.vocab_size, text_tokens, torch.tensor([IMAGE_TOKEN_INDEX]), seed)


def random_prompt(vocab: int, text_tokens: int, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(1, text_tokens + len(image)) ids: BOS, random text ids from [3, vocab), and the
    ``image`` placeholder ids after the first quarter of the text."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(3, vocab, (text_tokens - 1,), generator=generator)
    split = max(1, (text_tokens - 1) // 4)
    ids = torch.cat([torch.tensor([1]), text[:split], image, text[split:]])
    return ids.unsqueeze(0)


@dataclass
class Inputs:
    input_ids: torch.Tensor        # (batch, T), image placeholders included
    generate_kwargs: dict          # the host's generate() inputs: ids, pixels, sizes, on the device
    text_tokens: int               # prompt tokens other than image placeholders
    crops: int                     # crops the vision tower encodes per generate call
    frames: int = 0                # video rows: frames per clip (0: an image)
    frame_tokens: int = 0          # video rows: tokens per frame the LLM sees unpruned


def make_inputs(bench: BenchModel, batch_size: int, text_tokens: int) -> Inputs:
    from llava.mm_utils import process_images

    check_batch_size(batch_size)
    image = sample_image()
    images = process_images([image] * batch_size, bench.image_processor, bench.model.config)
    if isinstance(images, list):
        images = [im.to(bench.device, bench.dtype) for im in images]
    else:
        images = images.to(bench.device, bench.dtype)
    ids = prompt_ids(bench, text_tokens).repeat(batch_size, 1).to(bench.device)
    if isinstance(images, list):
        crops = sum(im.shape[0] if im.dim() == 4 else 1 for im in images)
    else:
        crops = images.shape[0] * (images.shape[1] if images.dim() == 5 else 1)
    kwargs = dict(inputs=ids, images=images, image_sizes=[image.size] * batch_size)
    return Inputs(ids, kwargs, ids.shape[1] - 1, crops)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size} is not valid: expected >= 1")
