"""Registry of vision-side selection methods: name -> class with ``from_config``.

Adding a method = one module with a :class:`VisionMethod` subclass and one line here.
"""

from __future__ import annotations

from typing import Dict, Type

from .base import CropRequest, Selection, SelectionContext, VisionMethod
from .baselines import ClsTopK, GridTokens, RandomTokens
from .cdpruner import CDPruner
from .divprune import DivPrune
from .freepruner import FreePruner
from .vispruner import VisPruner
from .visionzip import VisionZip

REGISTRY: Dict[str, Type[VisionMethod]] = {
    FreePruner.name: FreePruner,
    RandomTokens.name: RandomTokens,
    GridTokens.name: GridTokens,
    ClsTopK.name: ClsTopK,
    VisionZip.name: VisionZip,
    DivPrune.name: DivPrune,
    VisPruner.name: VisPruner,
    CDPruner.name: CDPruner,
}


def create(config) -> VisionMethod:
    """Instantiate the vision method named by ``config.vision_method``."""
    try:
        cls = REGISTRY[config.vision_method]
    except KeyError:
        raise ValueError(
            f"FREEPRUNER_METHOD: unknown vision method {config.vision_method!r}; "
            f"registered: {', '.join(sorted(REGISTRY))}"
        ) from None
    return cls.from_config(config)


__all__ = ["REGISTRY", "create", "CropRequest", "Selection", "SelectionContext", "VisionMethod"]
