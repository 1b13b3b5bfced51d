"""Put the projector's input and output on the scales the training needs.

DINOv2 features have per-dimension offsets and spreads that differ by ~5x; the
projector is trained on standardised features and the standardisation is folded
into its first linear layer afterwards, so the saved projector reads raw
features (an exact affine rewrite). Its output is scaled at initialisation to the
RMS of the language model's token embeddings, so image tokens start on the scale
the attention layers expect instead of being ignored or swamping the text.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def feature_stats(features: torch.Tensor, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation over all tokens of (N, T, D) features."""
    flat = features.reshape(-1, features.shape[-1]).double()
    return flat.mean(0).float(), flat.std(0).clamp_min(eps).float()


def standardize(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (features - mean) / std


@torch.no_grad()
def fold_standardization(first: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rewrite ``first`` so that ``first(x) == old_first((x - mean) / std)``."""
    weight = first.weight / std
    first.bias -= weight @ mean
    first.weight.copy_(weight)


@torch.no_grad()
def unfold_standardization(first: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """The inverse of :func:`fold_standardization`: rewrite ``first`` so that
    ``first((x - mean) / std) == old_first(x)``."""
    first.bias += first.weight @ mean
    first.weight.mul_(std)


def rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


@torch.no_grad()
def match_output_rms(projector: nn.Module, last: nn.Linear, sample: torch.Tensor, target: float) -> float:
    """Scale ``last`` (the projector's final linear layer) so the projector's output
    on ``sample`` has RMS ``target``; returns the RMS before scaling."""
    before = rms(projector(sample))
    last.weight.mul_(target / before)
    last.bias.mul_(target / before)
    return before
