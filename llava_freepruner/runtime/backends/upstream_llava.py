"""Backend for upstream ``llava``: patches that route images through the selection.

Only ``LlavaMetaForCausalLM`` is patched (the llama, mistral and mpt classes all
inherit from it). Each wrapper calls the original for everything it does not
change; :func:`remove` puts every original back.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import get_anyres_image_grid_shape
from llava.model.llava_arch import LlavaMetaForCausalLM, unpad_image

from .. import anyres, cpu
from . import upstream_loader
from .. import llm as llm_runtime
from ..anyres import TileLayout
from ..instruction import image_instructions
from ..methods.base import CropRequest, host_indices
from ..session import Session
from ..stats import crop_record
from ..tower import gather_batch, gather_kept, gather_projected, run_tower

_ORIGINALS = {}
_session: Optional[Session] = None


def _timings(run, share: float) -> dict:
    return {"vision_ms": round(1000 * run.vision_seconds * share, 3),
            "select_ms": round(1000 * run.select_seconds * share, 3)}


def encode_images(self, images):
    """LLaVA-1.5 path: every image keeps its budget of tokens, chosen per image."""
    session = _session
    if session is not None and session.precomputed is not None:
        return session.precomputed
    if session is None or (session.vision is None and session.stats is None):
        return _ORIGINALS["encode_images"](self, images)
    session.begin_images(self)
    tower = self.get_model().get_vision_tower()
    num_patches = tower.num_patches
    if session.vision is None:      # stats only: record the unpruned counts
        for _ in range(images.shape[0]):
            session.record({"tokens_in": num_patches, "tokens_out": num_patches})
        return _ORIGINALS["encode_images"](self, images)
    budget = session.config.budget(num_patches)
    session.announce(num_patches)

    requests = [CropRequest(budget, instruction=text) for text in session.take_instructions(images.shape[0])]
    projector = self.get_model().mm_projector
    run = run_tower(tower, images, requests, session.vision, projector, timed=session.stats is not None)
    with_cls = tower.select_feature == "cls_patch"
    if session.stats is not None:       # counting pivots waits for the device
        for selection in run.selections:
            session.record({**crop_record(selection, num_patches), **_timings(run, 1 / len(run.selections))})
    if run.projected is not None:   # the method projected every patch: gather from those
        return torch.stack([gather_projected(run, crop, with_cls, projector) for crop in range(len(run.selections))])
    kept = gather_batch(run.features, run.selections, with_cls)
    if kept is None:                # crops keep different numbers of rows
        kept = torch.stack([gather_kept(f, s, with_cls) for f, s in zip(run.features, run.selections)])
    return projector(kept)


def _merged_rows(selection, key: str, projector) -> List[torch.Tensor]:
    """The selection's ``prefix`` or ``merged`` rows after the projector ([] if none)."""
    rows = getattr(selection, key)
    return [] if rows is None else [projector(rows)]


def _image_layouts(model, crops_per_image: List[int], image_sizes) -> List[Optional[TileLayout]]:
    """Tile layout of each image (None: base crop only, or ``flat`` merging)."""
    config = model.config
    merge_type = getattr(config, "mm_patch_merge_type", "flat")
    tower = model.get_vision_tower()
    side = tower.num_patches_per_side
    layouts = []
    for i, crops in enumerate(crops_per_image):
        if crops == 1 or merge_type == "flat":
            layouts.append(None)
            continue
        if getattr(config, "image_aspect_ratio", "square") != "anyres":
            raise NotImplementedError("spatial patch merging needs image_aspect_ratio 'anyres' (as upstream)")
        wide, high = get_anyres_image_grid_shape(image_sizes[i], config.image_grid_pinpoints, tower.config.image_size)
        unpad = unpad_image if "unpad" in merge_type else None
        layouts.append(anyres.tile_layout(wide, high, side, image_sizes[i], unpad))
    return layouts


def _anyres_features(model, crops: torch.Tensor, crops_per_image: List[int], image_sizes, session):
    """LLaVA-NeXT path: prune every crop of every image, then lay kept tokens
    out as upstream does (base first, unpadded raster, one newline per row).

    Returns (features per image, or None when upstream's own are unchanged;
    visual tokens per image)."""
    tower = model.get_vision_tower()
    crop_tokens = tower.num_patches
    merge_type = getattr(model.config, "mm_patch_merge_type", "flat")
    layouts = _image_layouts(model, crops_per_image, image_sizes)
    newline = getattr(model.get_model(), "image_newline", None)
    if session.vision is None:      # upstream's tokens, counted
        counts = [anyres.unpruned_length(l, merge_type, c, crop_tokens) for l, c in zip(layouts, crops_per_image)]
        for tokens in counts:
            session.record({"tokens_in": tokens, "tokens_out": tokens})
        return None, counts

    session.announce(crop_tokens, anyres=True)
    requests = []
    for layout, crops_i, text in zip(layouts, crops_per_image, session.take_instructions(len(crops_per_image))):
        requests.append(CropRequest(session.config.budget(crop_tokens), instruction=text))
        for tile in range(crops_i - 1):
            valid = layout.tile_valid(tile) if layout else None
            valid_tokens = crop_tokens if valid is None else int(valid.sum())
            requests.append(CropRequest(session.config.crop_budget(valid_tokens, crop_tokens), valid, text))
    projector = model.get_model().mm_projector
    run = run_tower(tower, crops, requests, session.vision, projector, timed=session.stats is not None)
    # Project every token as upstream does, then gather: with all tokens kept
    # the result is bit-identical to upstream's.
    projected = projector(run.features) if run.projected is None else run.projected

    host_kept = host_indices(run.selections)      # the tile maps are planned on the host
    features, first = [], 0
    for layout, crops_i in zip(layouts, crops_per_image):
        selections = run.selections[first:first + crops_i]
        base = projected[first][selections[0].indices.to(projected.device)]
        base = torch.cat(_merged_rows(selections[0], "prefix", projector) + [base]
                         + _merged_rows(selections[0], "merged", projector))
        tiles = projected[first + 1:first + crops_i]
        kept_tiles = host_kept[first + 1:first + crops_i]
        if crops_i == 1:
            image = torch.cat([base, newline[None].to(base)]) if "unpad" in merge_type else base
        elif layout is None:
            image = anyres.assemble(base, tiles, kept_tiles, None, "flat")
        else:
            image = anyres.assemble(base, tiles, kept_tiles, layout, merge_type, newline)
        # A merging method's tile rows follow the map: every tile's prefix, then
        # every tile's merged rows (VisionZip's official order).
        extra = [row for key in ("prefix", "merged") for s in selections[1:] for row in _merged_rows(s, key, projector)]
        if extra:
            image = torch.cat([image] + [row.to(image) for row in extra])
        features.append(image)
        if session.stats is not None:
            session.record(_anyres_record(layout, merge_type, crops_i, crop_tokens, image, selections,
                                          requests[first:first + crops_i], run))
        first += crops_i
    return features, [f.shape[0] for f in features]


def _anyres_record(layout, merge_type, crops_i, crop_tokens, image, selections, requests, run) -> dict:
    """The stats record of one LLaVA-NeXT image."""
    return {
        "tokens_in": anyres.unpruned_length(layout, merge_type, crops_i, crop_tokens),
        "tokens_out": int(image.shape[0]),
        "crops": [crop_record(s, int(r.valid.sum()) if r.valid is not None else crop_tokens)
                  for s, r in zip(selections, requests)],
        **_timings(run, crops_i / len(run.selections)),
    }


def prepare_inputs_labels_for_multimodal(
    self, input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes=None
):
    """Encodes images itself when the plugin changes their tokens, lets upstream
    splice them into the prompt (padding, truncation, position ids), then tells
    the decoder-side pruning where the visual tokens landed."""
    original = _ORIGINALS["prepare_inputs_labels_for_multimodal"]
    args = (input_ids, position_ids, attention_mask, past_key_values, labels)
    session = _session
    if (session is None or not session.active or images is None or input_ids.shape[1] == 1
            or self.get_vision_tower() is None):
        return original(self, *args, images, image_sizes)
    multi_crop = type(images) is list or images.ndim == 5
    needs_text = session.vision is not None and session.vision.needs_instruction
    if not multi_crop and session.llm is None and not needs_text:
        return original(self, *args, images, image_sizes)      # encode_images does the work
    session.begin_images(self)
    if needs_text:
        tokenizer = session.prompt_tokenizer(self)
        session.instructions = image_instructions(
            input_ids, attention_mask, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    if multi_crop:
        images = [x.unsqueeze(0) if x.ndim == 3 else x for x in images]
        features, counts = _anyres_features(self, torch.cat(images), [x.shape[0] for x in images], image_sizes, session)
    else:
        features = self.encode_images(images)
        counts = [features.shape[1]] * features.shape[0]
    # Upstream walks images in order; a text-only sample still consumes one. One read of the ids serves this
    # and the visual spans below.
    prompt_rows = input_ids.tolist()
    session.tag_samples([b for b, ids in enumerate(prompt_rows) for _ in range(max(1, ids.count(IMAGE_TOKEN_INDEX)))])
    if features is None:
        out = original(self, *args, images, image_sizes)
    else:
        # A 4-D stand-in sends upstream down its single-crop branch, whose call
        # to encode_images returns the features computed above.
        session.precomputed = features
        try:
            out = original(self, *args, features[0].new_empty(len(features), 0, 0, 0), image_sizes)
        finally:
            session.precomputed = None
    if session.llm is not None:
        if self not in session.llm_models:
            llm_runtime.attach(self, session.llm)
            session.llm_models.add(self)
        spans = llm_runtime.visual_spans(
            prompt_rows, attention_mask, counts, getattr(self.config, "tokenizer_model_max_length", None),
            getattr(self.config, "tokenizer_padding_side", "right"))
        llm_runtime.begin_prefill(self, spans)
    return out


def _patch(owner, name: str, replacement) -> None:
    if name not in _ORIGINALS:
        _ORIGINALS[name] = getattr(owner, name)
        setattr(owner, name, replacement)


def install(session: Session, host=None) -> None:
    """Route upstream's image encoding through ``session`` (patches installed once)."""
    global _session
    upstream_loader.install(session.config)     # FREEPRUNER_QUANT: refused here, or the loader quantizes
    _session = session
    if session.config.device == "cpu":
        cpu.apply()
    _patch(LlavaMetaForCausalLM, "encode_images", encode_images)
    _patch(LlavaMetaForCausalLM, "prepare_inputs_labels_for_multimodal", prepare_inputs_labels_for_multimodal)


def uninstall() -> None:
    global _session
    for name, original in _ORIGINALS.items():
        setattr(LlavaMetaForCausalLM, name, original)
    _ORIGINALS.clear()
    cpu.remove()
    upstream_loader.uninstall()
    _session = None
