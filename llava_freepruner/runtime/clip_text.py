"""The CLIP text tower (and the image-side projection) of a CLIP checkpoint, for
instruction-conditioned methods (CDPruner).

LLaVA loads only the vision half of its CLIP checkpoint. CDPruner also needs
the text tower with its projection, the tokenizer, and the vision half's
``post_layernorm`` + ``visual_projection`` to embed patches in the joint space.
They are loaded from the same checkpoint (or from ``FREEPRUNER_CLIP_TEXT``).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch


class ClipTextUnavailable(RuntimeError):
    """No CLIP text tower can be loaded; the message says from where and how to fix it."""


class ClipText:
    """Text and image embeddings in a CLIP checkpoint's joint space (fp32)."""

    def __init__(self, path: str, device=None):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizerFast, CLIPVisionModelWithProjection

        self.path = path
        try:
            self.tokenizer = CLIPTokenizerFast.from_pretrained(path)
            self.text = _load_complete(CLIPTextModelWithProjection, path)
            # Only the vision half's head is needed: skip its encoder layers.
            vision = _load_complete(CLIPVisionModelWithProjection, path, num_hidden_layers=0)
        except (OSError, ValueError) as err:
            raise ClipTextUnavailable(
                f"FREEPRUNER_METHOD=cdpruner needs the CLIP text tower of the vision tower's checkpoint, and none "
                f"can be loaded from {path!r} ({err}). Set FREEPRUNER_CLIP_TEXT to a local folder holding that "
                "CLIP checkpoint (CLIPTextModelWithProjection, its tokenizer and the visual projection)."
            ) from None
        self.post_layernorm = vision.vision_model.post_layernorm
        self.visual_projection = vision.visual_projection
        self.max_positions = self.text.config.max_position_embeddings
        self._cache: Dict[str, torch.Tensor] = {}
        if device is not None:
            self.to(device)

    def to(self, device) -> "ClipText":
        for module in (self.text, self.post_layernorm, self.visual_projection):
            module.to(device)
        self._cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.visual_projection.weight.device

    @torch.no_grad()
    def embed_text(self, text: str) -> torch.Tensor:
        """(segments, dim): the text cut into windows of the tower's context
        length (77), zero-padded, each embedded on its own (CDPruner's way)."""
        if text not in self._cache:
            tokens = self.tokenizer(text=[text], return_tensors="pt")
            length = tokens.input_ids.shape[1]
            segments = (length - 1) // self.max_positions + 1
            padding = self.max_positions * segments - length
            inputs = {k: torch.cat([v, v.new_zeros(1, padding)], dim=1).view(-1, self.max_positions).to(self.device)
                      for k, v in tokens.items()}
            self._cache[text] = self.text(**inputs).text_embeds.float()
        return self._cache[text]

    @torch.no_grad()
    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """(n, dim) joint-space embeddings of feature-layer patch rows (n, hidden)."""
        patches = patches.to(device=self.device, dtype=torch.float32)
        return self.visual_projection(self.post_layernorm(patches))


def _load_complete(model_class, path: str, **overrides):
    """``model_class`` from ``path`` in fp32; a weight missing from the checkpoint
    (a vision-only checkpoint has no text tower) is an error, not a random init.
    Each half leaves the other's weights unused, as meant: transformers' report of
    them (a table per half on 5.x) is not logged."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, **overrides)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [key for key in info["missing_keys"] if not key.endswith("position_ids")]
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} weights of {model_class.__name__}, e.g. {missing[0]}")
    return model.float().eval()


def load(path: Optional[str], device=None) -> ClipText:
    if not path:
        raise ClipTextUnavailable(
            "FREEPRUNER_METHOD=cdpruner needs a CLIP text tower, but the vision tower names no checkpoint: "
            "set FREEPRUNER_CLIP_TEXT to a local CLIP checkpoint folder.")
    return ClipText(path, device)
