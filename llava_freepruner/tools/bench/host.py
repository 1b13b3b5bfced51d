"""The parts of a host's model object the bench times and counts, per backend.

The probe, the FLOPs and the capture-memory measurement read a model only
through :class:`HostParts`; each backend names where its parts live. Which
module builds a backend's models and inputs is listed here as well.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

BACKENDS = ("upstream", "transformers")

# backend -> module with build_random, load_checkpoint and make_inputs
_BUILDERS = {"upstream": "model", "transformers": "hf_model"}


@dataclass(frozen=True)
class HostParts:
    vision_tower: torch.nn.Module   # its forward is the "vision" stage (capture hooks included)
    decoder: torch.nn.Module        # the LLM body: its prompt forward is the prefill; ``.layers`` count tokens
    lm_head: torch.nn.Module
    projector: torch.nn.Module
    text_config: Any                # the decoder's shapes (FLOPs, layer count)
    vision_config: Any              # the tower's shapes
    feature_layer: int              # the tower layer whose output is projected (negative: from the end)
    projects_in_tower: bool = False  # the projector runs inside the tower, on every token (Qwen-VL's merger)

    @property
    def num_patches(self) -> int:
        """Patches per crop."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    @property
    def tokens_per_crop(self) -> int:
        """Tokens a crop gives the LLM unpruned: its patches, or Qwen-VL's merged 2 x 2 units."""
        return self.num_patches // getattr(self.vision_config, "spatial_merge_size", 1) ** 2


def check_backend(name: str) -> None:
    """Refuse a backend that is unknown or whose host library is missing here."""
    if name not in BACKENDS:
        raise ValueError(f"--backend {name!r} is not valid: expected one of {', '.join(BACKENDS)}")
    if name == "upstream" and importlib.util.find_spec("llava") is None:
        raise ValueError("--backend upstream needs upstream llava (llava-torch), which is not installed here: "
                         "set it up with `bash eval_scripts/install.sh`, or use --backend transformers")
    if name == "transformers":
        import transformers

        from ...runtime.backends.transformers_llava import check_version
        from ...config import ConfigError

        try:
            check_version(transformers.__version__)
        except ConfigError as err:
            raise ValueError(f"--backend transformers: {err}") from None


def builder(backend: str):
    """The module that builds ``backend``'s models and inputs."""
    check_backend(backend)
    return importlib.import_module(f"{__package__}.{_BUILDERS[backend]}")


def parts(backend: str, model) -> HostParts:
    if backend == "upstream":
        llm, tower = model.get_model(), model.get_vision_tower()
        return HostParts(tower, llm, model.lm_head, llm.mm_projector, model.config, tower.config, tower.select_layer)
    base = model.model              # LlavaModel / LlavaNextModel / the video models / the Qwen-VL models
    if hasattr(base, "visual"):     # Qwen-VL: the merger (and Qwen3-VL's deepstack mergers) end the tower
        from .archs import vision_shape

        tower = base.visual
        mergers = torch.nn.ModuleList([tower.merger, *getattr(tower, "deepstack_merger_list", [])])
        return HostParts(tower, base.language_model, model.lm_head, mergers, model.config.text_config,
                         vision_shape(model), -1, projects_in_tower=True)
    tower = getattr(base, "video_tower", None) or base.vision_tower     # Video-LLaVA: its video tower
    return HostParts(tower, base.language_model, model.lm_head, base.multi_modal_projector,
                     model.config.text_config, model.config.vision_config, model.config.vision_feature_layer)
