"""Scenes: a 224 x 224 crop of a photo with 2-4 filled shapes that do not overlap."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Tuple

from PIL import Image, ImageDraw

SIZE = 224
SHAPES = ("circle", "square", "triangle")
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220),
    "yellow": (235, 215, 30), "purple": (140, 50, 170), "orange": (245, 140, 20),
}
MIN_OBJECTS, MAX_OBJECTS = 2, 4
MIN_EXTENT, MAX_EXTENT = 28, 48
GAP = 2            # px between the boxes of two shapes, so they never touch


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    x: int          # top-left corner of the bounding box
    y: int
    extent: int     # side of the (square) bounding box

    def box(self) -> Tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.extent, self.y + self.extent


@dataclass(frozen=True)
class Scene:
    photo: str                              # file the background was cropped from
    crop: Tuple[int, int, int, int]         # left, top, right, bottom in the photo
    objects: Tuple[Shape, ...]


def boxes_apart(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int], gap: int = GAP) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def sample_scene(rng: random.Random, photo_path: str, photo: Image.Image) -> Scene:
    """A random square crop (any side from 224 px to the photo's short side) and
    2-4 shapes, no two with the same shape and colour, none overlapping."""
    side = rng.randint(SIZE, min(photo.size))
    left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLORS], rng.randint(MIN_OBJECTS, MAX_OBJECTS))
    objects = []
    for shape, color in kinds:
        while True:
            extent = rng.randint(MIN_EXTENT, MAX_EXTENT)
            candidate = Shape(shape, color, rng.randint(0, SIZE - extent), rng.randint(0, SIZE - extent), extent)
            if all(boxes_apart(candidate.box(), other.box()) for other in objects):
                objects.append(candidate)
                break
    return Scene(photo_path, (left, top, left + side, top + side), tuple(objects))


def draw_shape(draw: ImageDraw.ImageDraw, obj: Shape, fill) -> None:
    x0, y0, x1, y1 = obj.box()
    # PIL boxes include their last pixel: the shape spans exactly ``extent`` px.
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)


def render(scene: Scene, photo: Image.Image) -> Image.Image:
    image = photo.crop(scene.crop).resize((SIZE, SIZE), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj, COLORS[obj.color])
    return image
