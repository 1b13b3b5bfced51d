"""Grounded initialisation of the projector, before any language-model step.

The scenes' geometry says which patch shows which object, so the projector can
first be fitted by plain regression: every patch mostly covered by an object is
mapped to the sum of the token embeddings of its colour and shape words ("red" +
"circle"), every other patch to the embedding of "background". The frozen
language model then starts from image tokens that already read like words; the
end-to-end training afterwards only has to refine them. This stage costs seconds:
no language-model forward is needed.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .scenes import SIZE, Scene, draw_shape

PATCH = 14
GRID = SIZE // PATCH
MIN_COVER = 0.25          # fraction of a patch an object must cover to label it
BACKGROUND = "background"


def patch_labels(scene: Scene) -> torch.Tensor:
    """(GRID * GRID,) index into ``scene.objects`` of the object covering most of
    each patch (raster order), or -1 where none covers MIN_COVER of it."""
    covered = []
    for obj in scene.objects:
        mask = Image.new("L", (SIZE, SIZE), 0)
        draw_shape(ImageDraw.Draw(mask), obj, 1)
        pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32)).reshape(GRID, PATCH, GRID, PATCH)
        covered.append(pixels.mean(dim=(1, 3)).reshape(-1))
    cover, index = torch.stack(covered).max(0)
    return torch.where(cover >= MIN_COVER, index, torch.full_like(index, -1))


def word_embedding(embed: Callable[[str], torch.Tensor], word: str) -> torch.Tensor:
    return embed(" " + word)


def patch_targets(scenes: Sequence[Scene], embed: Callable[[str], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, GRID * GRID, hidden) regression targets and (N, GRID * GRID) flags of
    object patches; ``embed(text)`` is the mean input embedding of the text's tokens."""
    background = word_embedding(embed, BACKGROUND)
    cache = {}
    targets, objects = [], []
    for scene in scenes:
        rows = []
        labels = patch_labels(scene)
        objects.append(labels >= 0)
        for label in labels.tolist():
            if label < 0:
                rows.append(background)
                continue
            obj = scene.objects[label]
            if (obj.color, obj.shape) not in cache:
                cache[obj.color, obj.shape] = word_embedding(embed, obj.color) + word_embedding(embed, obj.shape)
            rows.append(cache[obj.color, obj.shape])
        targets.append(torch.stack(rows))
    return torch.stack(targets), torch.stack(objects)


def fit(projector: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, objects: torch.Tensor,
        steps: int, lr: float, batch: int = 4096, object_weight: float = 4.0, seed: int = 0) -> float:
    """Adam on the mean squared error over patches, object patches weighted
    ``object_weight`` times (they are a small minority); returns the last loss."""
    x = inputs.reshape(-1, inputs.shape[-1])
    y = targets.reshape(-1, targets.shape[-1])
    is_object = objects.reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(projector.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss = torch.zeros(())
    for _ in range(steps):
        rows = torch.randint(len(x), (batch,), generator=generator)
        weight = torch.where(is_object[rows], object_weight, 1.0)
        loss = (weight * (projector(x[rows]) - y[rows]).pow(2).mean(-1)).sum() / weight.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss.item()
