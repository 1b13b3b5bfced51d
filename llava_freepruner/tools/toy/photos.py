"""Real photos that ship inside installed packages, by name.

Training and held-out scenes use disjoint photo sets. A photo can also be given
as a path to any image file.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, List, Sequence, Tuple

from PIL import Image

from ..vision.images import open_image

# name -> (package, path inside it)
_SOURCES: Dict[str, Tuple[str, str]] = {
    **{name: ("skimage", f"data/{name}.png") for name in (
        "astronaut", "chelsea", "coffee", "ihc", "motorcycle_left", "coins", "grass", "gravel",
        "brick", "moon", "camera")},
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "retina": ("skimage", "data/retina.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}

TRAIN_PHOTOS = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "ihc", "motorcycle_left",
                "retina", "coins", "grass", "gravel", "brick", "moon")
HELDOUT_PHOTOS = ("coffee", "china", "flower", "grace_hopper", "camera")
PHOTO_SETS = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}
MIN_SIDE = 224


def _package_file(package: str, relative: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"photo from {package!r}: the package is not installed (pip install scikit-image "
                         "scikit-learn matplotlib)")
    return os.path.join(list(spec.submodule_search_locations)[0], *relative.split("/"))


def resolve(photos: Sequence[str]) -> List[str]:
    """Names (``train``/``heldout`` expand to their sets) or image paths -> file paths."""
    paths = []
    for item in photos:
        if item in PHOTO_SETS:
            paths += resolve(PHOTO_SETS[item])
        elif item in _SOURCES:
            paths.append(_package_file(*_SOURCES[item]))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"photo {item!r}: not a file and not a known name; accepted names: "
                             f"{', '.join(PHOTO_SETS)}, {', '.join(sorted(_SOURCES))}")
    if not paths:
        raise ValueError("no photos given")
    return paths


def load(path: str) -> Image.Image:
    """The photo as RGB; ValueError when it is smaller than a scene."""
    image = open_image(path)
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"photo {path!r} is {image.width}x{image.height}: both sides must be >= {MIN_SIDE} px")
    return image
