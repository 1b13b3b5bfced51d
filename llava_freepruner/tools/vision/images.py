"""Photos in, model inputs out, with errors that name the file."""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(folder: str) -> List[str]:
    """Image files directly in ``folder``, sorted by name."""
    if not os.path.exists(folder):
        raise ValueError(f"--images {folder!r}: no such folder")
    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder!r}: not a folder; give a folder of photos")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise ValueError(f"--images {folder!r}: no images in it (accepted suffixes: {', '.join(IMAGE_SUFFIXES)})")
    return paths


def open_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB; ValueError naming the file if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path!r}: {err}") from None


def square_view(image: Image.Image, size: int, pad_color: Tuple[int, int, int] = None) -> Image.Image:
    """The ``size`` x ``size`` picture the model sees: padded to a square with
    ``pad_color`` (LLaVA's 'pad' mode) or, without it, resized on its shortest
    side and centre-cropped (CLIP's and DINOv2's processors)."""
    if pad_color is not None:
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), pad_color)
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return canvas.resize((size, size), Image.BICUBIC)
    return ImageOps.fit(image, (size, size), Image.BICUBIC)


def to_tensor(view: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) float32, normalised per channel."""
    pixels = torch.frombuffer(bytearray(view.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(view.height, view.width, 3).permute(2, 0, 1).float() / 255.0
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
