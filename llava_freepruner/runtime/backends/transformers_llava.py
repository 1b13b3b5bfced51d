"""Backend for transformers' own LLaVA classes (``LlavaModel``, ``LlavaNextModel``,
``LlavaOnevisionModel``, ``LlavaNextVideoModel``, ``VideoLlavaModel``).

Three patches per host class (a fourth, ``get_video_features``, for the models
with videos: :mod:`.transformers_video`, which installs this backend first), each
calling the original for all its work,
and a check in front of the model's ``generate``:

- ``get_image_features``: the host's own tower + projector (+ LLaVA-NeXT packing)
  run with the capture attached; the method selects per crop. Each image keeps
  its full number of feature rows (``generate()`` of transformers 5.x calls this
  before the prefill and splits and repeats its output by placeholder counts):
  the K tokens the LLM will see come first, in order (kept rows, and a merging
  method's projected rows), and the count K is noted.
- ``get_placeholder_mask``: the host's own mask and check; every placeholder
  after an image's first K is handed to the decoder of that model as dropped.
- the decoder (``language_model``) forward of that model instance: the noted
  positions leave the sequence there (:mod:`llava_freepruner.runtime.sequence`), and
  every later decode step on the same cache is translated. ``generate()`` keeps
  the caller's ``input_ids`` as the prefix; the KV cache holds text + kept tokens.
  A later turn on that cache (``generate(input_ids=<the whole conversation>,
  cache=<it>)``) arrives cut at the cache's shortened length: the positions
  already cached are skipped there.
- ``generate``: refused before any work are ``prefill_chunk_size`` with pruning
  (chunks split an image's placeholders over several prefill calls) and a new
  image or video in a turn that continues a pruned cache.

Text-conditioned methods (CDPruner) read each image's instruction back from the
prompt's ``input_ids`` (:mod:`llava_freepruner.runtime.instruction`). Those are noted where
the images get encoded from: transformers 5.x ``generate()`` encodes them before
the prefill, from its own arguments (the rows not yet repeated for beams); the
model's ``forward`` (4.57's ``generate()``, and any direct call) from its
arguments (4.57 repeats ids and images alike). The ``forward`` of each host class
is wrapped for that alone.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import inspect
import itertools
import time
import weakref
from dataclasses import dataclass
from typing import List, Optional

import torch

from .. import anyres, quantization
from .. import llm as llm_runtime
from ..capture import AttentionCapture
from ...config import ConfigError
from ..instruction import expanded_instructions, prompt_rows
from ..methods.base import CropRequest, SelectionContext, gather_rows, host_indices, select, to_device
from ..sequence import Compression
from ..session import Session
from ..stats import crop_record
from ..tower import Clock, feature_layer, sync

SUPPORTED_VERSIONS = "4.57.x, or 5.17 and newer 5.x"
# host module -> the model class that merges image features
HOST_CLASSES = {
    "transformers.models.llava.modeling_llava": "LlavaModel",
    "transformers.models.llava_next.modeling_llava_next": "LlavaNextModel",
    "transformers.models.llava_onevision.modeling_llava_onevision": "LlavaOnevisionModel",
    "transformers.models.llava_next_video.modeling_llava_next_video": "LlavaNextVideoModel",
    "transformers.models.video_llava.modeling_video_llava": "VideoLlavaModel",
}
_ATTR = "_freepruner_compression"
_NEXT = "_freepruner_next_call"         # on a pruned cache: (generate() call, caller position it continues at)

_session: Optional[Session] = None
_ORIGINALS = {}                         # (class, attribute) -> original (None: inherited)
_hooked = weakref.WeakKeyDictionary()   # language model -> its _ShorteningHooks
_generate_call = None                   # a token per generate() call in flight
_prompt = None                          # the _Prompt of the generate() or forward call in flight (text methods)
_clip_widths = {}                       # FREEPRUNER_CLIP_TEXT folder -> its vision half's width


def check_version(version: str) -> None:
    """Refuse a transformers release outside the supported range, naming both."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    major, minor = (parts + [0, 0])[:2]
    if not ((major, minor) == (4, 57) or (major == 5 and minor >= 17)):
        raise ConfigError(
            f"transformers {version} is installed; llava_freepruner prunes transformers' LLaVA classes "
            f"on transformers {SUPPORTED_VERSIONS}. Install one of those "
            "(upstream llava keeps its own pin, transformers 4.37.2)."
        )


def install(session: Session, host) -> None:
    import transformers

    check_version(transformers.__version__)
    quantization.refuse_for_caller_loaded(session.config)
    global _session
    _session = session
    cls = getattr(host, HOST_CLASSES[host.__name__])
    patch(cls, "__init__", _wrap_init(cls.__init__))
    patch(cls, "get_image_features", _wrap_image_features(cls.get_image_features))
    patch(cls, "get_placeholder_mask", wrap_placeholder_mask(cls.get_placeholder_mask))
    patch(cls, "forward", _wrap_forward(cls.forward))
    generator = getattr(host, HOST_CLASSES[host.__name__].replace("Model", "ForConditionalGeneration"))
    patch(generator, "generate", wrap_generate(generator.generate))


def current_session() -> Optional[Session]:
    return _session


def share_session(session: Session) -> None:
    """Serve ``session`` from the merge and decoder patches (another host family's backend uses them)."""
    global _session
    _session = session


def uninstall() -> None:
    global _session
    for (cls, name), original in _ORIGINALS.items():
        if original is None:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
    _ORIGINALS.clear()
    for hooks in list(_hooked.values()):
        hooks.remove()
    _hooked.clear()
    _session = None


def patch(cls, name: str, replacement) -> None:
    if (cls, name) not in _ORIGINALS:
        _ORIGINALS[(cls, name)] = cls.__dict__.get(name)
        setattr(cls, name, replacement)


def refuse_unservable(session: Session, cls, config=None) -> None:
    """Refuse what the plugin cannot do with a model of class ``cls`` and ``config`` (known once it is built)."""
    if _needs_text(session) and config is not None:
        _refuse_without_text_tower(session, config)
    if session.config.video_variables and not hasattr(cls, "get_video_features"):
        raise ConfigError(f"{' and '.join(session.config.video_variables)} set, but {cls.__name__} is an "
                          "image-only model: unset the video variables (or use a video model).")


def _needs_text(session: Optional[Session]) -> bool:
    return session is not None and session.vision is not None and session.vision.needs_instruction


def _refuse_without_text_tower(session: Session, config) -> None:
    """A text-conditioned method (CDPruner) embeds the instruction with the CLIP text tower
    of the vision tower's checkpoint. transformers' LLaVA checkpoints hold the vision half
    only: the whole CLIP checkpoint comes from FREEPRUNER_CLIP_TEXT, read here (its
    config.json alone) before any weight loads."""
    method = session.config.vision_method or session.vision.name
    vision = config.vision_config
    if vision.model_type != "clip_vision_model":
        raise ConfigError(f"FREEPRUNER_METHOD={method} scores patches against the instruction in a CLIP "
                          f"checkpoint's joint space, and this model's vision tower is {vision.model_type}, "
                          "which has no CLIP text tower: choose a method that needs no text.")
    path = getattr(session.vision, "text_source", None) or session.config.clip_text
    if not path:
        raise ConfigError(f"FREEPRUNER_METHOD={method} needs the CLIP text tower of the vision tower's checkpoint, "
                          "and transformers' LLaVA checkpoints hold its vision half only: set FREEPRUNER_CLIP_TEXT "
                          "to a local folder holding that whole CLIP checkpoint (for the llava-hf 1.5 and 1.6 "
                          "models, openai/clip-vit-large-patch14-336).")
    if path not in _clip_widths:
        from transformers import AutoConfig

        try:
            clip = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"FREEPRUNER_CLIP_TEXT={path!r} holds no CLIP checkpoint ({err}): set it to a local "
                              "folder holding the vision tower's whole CLIP checkpoint.") from None
        if clip.model_type != "clip":
            raise ConfigError(f"FREEPRUNER_CLIP_TEXT={path!r} holds a {clip.model_type!r} checkpoint, not a whole CLIP "
                              "(text tower and visual projection): set it to the vision tower's CLIP checkpoint.")
        _clip_widths[path] = clip.vision_config.hidden_size
    if _clip_widths[path] != vision.hidden_size:
        raise ConfigError(f"FREEPRUNER_CLIP_TEXT={path!r} holds a CLIP whose vision width is {_clip_widths[path]}, "
                          f"and this model's vision tower is {vision.hidden_size} wide: set it to the CLIP checkpoint "
                          "the vision tower was taken from.")


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        """Refusals the configuration alone decides, before any weight is made or loaded."""
        session = _session
        if session is not None and session.active:
            refuse_unservable(session, type(self), config)
            if session.llm is not None:
                try:
                    session.llm.check_model(config.text_config.num_hidden_layers)
                except ValueError as err:
                    raise ConfigError(f"FREEPRUNER_METHOD={session.config.method}: {err}.") from None
        original(self, config, *args, **kwargs)

    return __init__


def wrap_generate(original):
    @functools.wraps(original)
    def generate(self, *args, **kwargs):
        global _generate_call, _prompt
        session = _session
        prompt = _prompt
        if session is not None:
            # generate(inputs, generation_config, ...): the positional ones, then the keywords
            options = {**inspect.signature(original).bind_partial(self, *args).arguments, **kwargs}
            if _drops_tokens(session.config):
                _refuse_prefill_chunks(session.config, options.get("generation_config") or self.generation_config,
                                       options)
            _refuse_new_media_on_a_pruned_cache(self, options)
            if _needs_text(session):        # 5.x encodes the images from these, before the prefill
                prompt = _Prompt.of(options.get("input_ids", options.get("inputs")), options.get("attention_mask"))
        outer, _generate_call = _generate_call, object()
        outer_prompt, _prompt = _prompt, prompt
        try:
            return original(self, *args, **kwargs)
        finally:
            _generate_call, _prompt = outer, outer_prompt

    return generate


def _wrap_forward(original):
    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        """Notes the call's prompt for the images it encodes (text-conditioned methods only)."""
        if not _needs_text(_session):
            return original(self, *args, **kwargs)
        call = inspect.signature(original).bind_partial(self, *args, **kwargs).arguments
        global _prompt
        outer, _prompt = _prompt, _Prompt.of(call.get("input_ids"), call.get("attention_mask"))
        try:
            return original(self, *args, **kwargs)
        finally:
            _prompt = outer

    return forward


@dataclass
class _Prompt:
    """The token ids of the prompts whose images are encoded, read to the host once, when first needed."""

    input_ids: Optional[torch.Tensor]
    attention_mask: Optional[torch.Tensor]
    _rows: Optional[List[List[int]]] = None

    @classmethod
    def of(cls, input_ids, attention_mask) -> "_Prompt":
        is_ids = isinstance(input_ids, torch.Tensor) and not input_ids.is_floating_point() and input_ids.dim() == 2
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        return cls(input_ids if is_ids else None, mask)

    def rows(self) -> List[List[int]]:
        if self._rows is None:
            self._rows = prompt_rows(self.input_ids, self.attention_mask)
        return self._rows


def instructions(model, kind: str, lengths: List[int]) -> List[str]:
    """The instruction of each image (``kind`` "image") or video ("video") of the call in
    flight, from the prompt's ids: ``lengths``, the placeholders each one fills, in order."""
    session = _session
    method = session.config.vision_method or session.vision.name
    prompt = _prompt
    if prompt is None or prompt.input_ids is None:
        raise RuntimeError(f"FREEPRUNER_METHOD={method} reads each {kind}'s instruction from the prompt's input_ids, "
                           f"and these {kind}s were encoded without them (a call with inputs_embeds, or "
                           f"get_{kind}_features called directly): pass input_ids to generate() or the model.")
    tokenizer = session.prompt_tokenizer(model, fast=True)
    # a special token after the placeholders (chatml's <|im_end|>, an end of sequence) ends the turn
    ends = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}

    def decode(ids) -> str:
        cut = next((i for i, token in enumerate(ids) if token in ends), len(ids))
        return tokenizer.decode(ids[:cut], skip_special_tokens=True)

    config = model.config
    placeholders = {getattr(config, f"{other}_token_id", None) for other in ("image", "video")} - {None}
    return expanded_instructions(prompt.rows(), decode, getattr(config, f"{kind}_token_id"), lengths, placeholders)


def _refuse_prefill_chunks(config, generation_config, options) -> None:
    chunk = options.get("prefill_chunk_size", getattr(generation_config, "prefill_chunk_size", None))
    if chunk is not None:
        raise ConfigError(
            f"generate(prefill_chunk_size={chunk}) with FREEPRUNER_METHOD={config.method} pruning: llava_freepruner "
            "shortens an image prompt once, at a prefill that sees all of it, and chunks split its placeholders over "
            "several prefill calls. Leave prefill_chunk_size unset (pruning already shortens the prefill), or set "
            "FREEPRUNER_RATIO=1.0.")


def _refuse_new_media_on_a_pruned_cache(model, options) -> None:
    """A turn that continues a pruned cache may add text only: images are pruned at a prefill
    from an empty cache."""
    cache = options.get("cache", options.get("past_key_values"))
    compression = getattr(cache, _ATTR, None)
    ids = options.get("input_ids", options.get("inputs"))
    if compression is None or ids is None or cache.get_seq_length() == 0:
        return
    seen = cache.get_seq_length() - compression.width + compression.length      # in the caller's positions
    new = ids[:, seen:]
    if any(bool((new == getattr(model.config, key)).any())
           for key in ("image_token_id", "video_token_id") if getattr(model.config, key, None) is not None):
        raise ConfigError(
            "a new image or video in a turn that continues a pruned turn's KV cache: llava_freepruner prunes the "
            "visual tokens of a prompt at a prefill from an empty cache. Continue the cache with text only, or run "
            "the whole conversation (every turn's text and images) without the cache.")


def _drops_tokens(config) -> bool:
    """Whether the configuration may take tokens out of the sequence (ratio 1.0 keeps them all)."""
    return (config.tokens is not None or (config.ratio is not None and config.ratio < 1)
            or config.llm_method is not None)


# -- vision side ----------------------------------------------------------------------------


@dataclass
class _Image:
    """One image's crops and, for LLaVA-NeXT, its tile layout in the packed sequence."""

    first_crop: int
    num_crops: int
    layout: Optional[anyres.TileLayout] = None
    newline: bool = False


def _num_prefix(vision_config) -> int:
    """Tokens the tower puts before its patches: [CLS] (none in SigLIP) and registers."""
    cls_token = 0 if "siglip" in vision_config.model_type else 1
    return cls_token + getattr(vision_config, "num_register_tokens", 0)


def _plan(model, pixel_values, call, config) -> tuple:
    """(crop requests in the order the tower sees the crops, images, patches per crop side)."""
    vision = model.config.vision_config
    patch = vision.patch_size
    if not hasattr(model, "pack_image_features"):           # LlavaModel: one crop per image
        rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        _check_budget(config, rows * cols)
        request = CropRequest(config.budget(rows * cols))
        images = [_Image(i, 1) for i in range(pixel_values.shape[0])]
        return [request] * len(images), images, (rows, cols)

    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape, image_size_to_num_patches, unpad_image)

    side = vision.image_size // patch
    _check_budget(config, side * side)
    image_sizes = call["image_sizes"]
    # OneVision: several images in one sample go in as one crop each; large maps are resampled
    per_sample = call.get("batch_num_images")
    anyres_crops = [True] * len(image_sizes) if per_sample is None else [n == 1 for n in per_sample for _ in range(n)]
    max_crops = _max_crops(model, call)
    requests, images = [], []
    for size, tiled in zip(image_sizes, anyres_crops):
        crops = image_size_to_num_patches(size, model.config.image_grid_pinpoints, vision.image_size) if tiled else 1
        image = _Image(len(requests), crops, newline=model.image_newline is not None)
        requests.append(CropRequest(config.budget(side * side)))
        if crops > 1:
            high, wide = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, vision.image_size)
            image.layout = anyres.tile_layout(wide, high, side, size, unpad_image)
            if max_crops is not None:
                image.layout = dataclasses.replace(
                    image.layout, resampled=anyres.resampled_shape(image.layout, max_crops))
            for tile in range(crops - 1):
                valid = image.layout.tile_valid(tile)
                requests.append(CropRequest(config.crop_budget(int(valid.sum()), side * side), valid))
        images.append(image)
    return requests, images, (side, side)


def _max_crops(model, call) -> Optional[int]:
    """OneVision's ``anyres_max_N`` limit (None for models that never resample)."""
    if model.config.model_type != "llava_onevision":
        return None
    aspect = call.get("vision_aspect_ratio") or model.config.vision_aspect_ratio
    if not aspect.startswith("anyres_max_"):
        raise ConfigError(f"vision_aspect_ratio={aspect!r}: llava_freepruner follows OneVision's 'anyres_max_N' only")
    return int(aspect[len("anyres_max_"):])


def _check_budget(config, crop_tokens: int) -> None:
    if config.tokens is not None and config.tokens > crop_tokens:
        raise ConfigError(
            f"FREEPRUNER_TOKENS={config.tokens} exceeds the {crop_tokens} visual tokens of one image crop "
            f"of this model: expected 1..{crop_tokens} (or FREEPRUNER_RATIO)."
        )


def _wrap_image_features(original):
    @functools.wraps(original)
    def get_image_features(self, *args, **kwargs):
        session = _session
        if session is None or not session.active:
            return original(self, *args, **kwargs)
        call = inspect.signature(original).bind(self, *args, **kwargs).arguments
        # Video-LLaVA on 4.57 names them pixel_values_images
        pixel_values = call["pixel_values"] if "pixel_values" in call else call["pixel_values_images"]
        layer = call.get("vision_feature_layer")
        layer = self.config.vision_feature_layer if layer is None else layer
        if not isinstance(layer, int):
            raise ConfigError(f"vision_feature_layer={layer!r}: llava_freepruner selects on one tower layer; "
                              "models that concatenate several layers' features are not supported.")
        refuse_unservable(session, type(self), self.config)      # the plugin may have come after the model
        requests, images, grid = _plan(self, pixel_values, call, session.config)
        vision = self.config.vision_config
        ctx = SelectionContext(requests=requests, grid=grid, num_prefix=_num_prefix(vision),
                               num_layers=vision.num_hidden_layers,
                               feature_layer=feature_layer(vision.num_hidden_layers, layer),
                               projector=self.multi_modal_projector, device=pixel_values.device)
        clock = Clock(session.stats is not None)
        clock.start(pixel_values)
        if session.vision is None:
            output, selections, select_seconds = original(self, *args, **kwargs), None, 0.0
        else:
            session.announce(grid[0] * grid[1], anyres=hasattr(self, "pack_image_features"))
            with AttentionCapture(getattr(self, "image_tower", None) or self.vision_tower, session.vision, ctx) as capture:
                output = original(self, *args, **kwargs)
            ctx.output_dtype = pooled_features(output)[0].dtype
            if session.vision.needs_instruction:
                texts = instructions(self, "image", [f.shape[0] for f in pooled_features(output)])
                ctx.requests = requests = [dataclasses.replace(r, instruction=texts[i])
                                           for i, image in enumerate(images)
                                           for r in requests[image.first_crop:image.first_crop + image.num_crops]]
            selections = select(session.vision, ctx)
            select_seconds = capture.seconds
        features = pooled_features(output)
        seconds = clock.stop(features[0])
        pending, packed, first_positions = [], [], {}
        together = None if selections is None else _pack_together(images, selections, features, grid,
                                                                   self.multi_modal_projector)
        tiled = together is None and selections is not None and any(image.layout is not None for image in images)
        host_kept = host_indices(selections) if tiled else None      # tile maps are packed on the host
        for image, feats in zip(images, features):
            n = feats.shape[0]
            if together is not None:
                kept = together[1]
            else:
                sequence = feats if selections is None else _llm_sequence(
                    image, selections, feats, grid, self.multi_modal_projector, host_kept)
                kept = sequence.shape[0]
                if kept > n:
                    raise RuntimeError(f"{session.config.method} made {kept} tokens for an image of {n}")
                # The LLM sees an image's tokens in order, whichever placeholders carry them:
                # they go to the first ones, the rest leave the sequence in the decoder.
                packed.append(sequence if kept == n else torch.cat([sequence, feats[kept:]]))
            record = {"tokens_in": n, "tokens_out": kept}
            if session.stats is not None:       # counting pivots waits for the device
                record = _image_record(image, selections, requests, n, kept, grid,
                                       seconds * image.num_crops / len(requests),
                                       select_seconds * image.num_crops / len(requests))
            if kept not in first_positions:
                first_positions[kept] = torch.arange(kept)
            pending.append((n, first_positions[kept], record))
            session.record(record)
        session.pending_images = pending
        if selections is None:
            return output
        if together is not None:
            packed = together[0]
        else:
            packed = packed if isinstance(features, (list, tuple)) else torch.stack(packed)
        if hasattr(output, "pooler_output"):
            output.pooler_output = packed
            return output
        return packed

    return get_image_features


def pooled_features(output):
    """Per-image features of ``get_image_features``: 5.x returns an output object, 4.57 the list."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _pack_together(images, selections, features, grid, projector) -> Optional[tuple]:
    """(packed features, tokens kept per image) of every image at once, where each image
    is one crop of the same shape keeping the same number of patches and of merged rows
    (LLaVA-1.5): what :func:`_llm_sequence` does image by image, in a number of ops that
    does not grow with the batch. The features come back in the host's form: one tensor,
    or a list."""
    shapes = {(int(s.indices.numel()), _shape(s.prefix), _shape(s.merged)) for s in selections}
    if (len(shapes) != 1 or len({tuple(f.shape) for f in features}) != 1
            or any(image.layout is not None for image in images)):
        return None
    newline = int(images[0].newline)
    if any(int(image.newline) != newline for image in images):
        return None
    listed = not torch.is_tensor(features)
    features = torch.stack(features) if listed else features
    n = features.shape[1]
    lead = n - grid[0] * grid[1] - newline
    device = features.device
    kept = lead + torch.stack([s.indices for s in selections]).to(device)
    if lead:
        kept = torch.cat([torch.arange(lead, device=device).expand(len(images), -1), kept], dim=1)

    def projected(key):
        rows = torch.stack([getattr(s, key) for s in selections]).to(features.dtype)
        return [projector(rows).to(features)]

    first = selections[0]
    # a merging method's prefix rows, the kept tokens in order, its merged rows, the newline;
    # the rest after them, where they leave the sequence in the decoder
    pieces = ((projected("prefix") if first.prefix is not None else []) + [gather_rows(features, kept)]
              + (projected("merged") if first.merged is not None else []) + ([features[:, n - 1:]] if newline else []))
    sequence = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
    count = sequence.shape[1]
    if count > n:
        raise RuntimeError(f"the selection made {count} tokens for an image of {n}")
    packed = torch.cat([sequence, features[:, count:]], dim=1)
    return list(packed) if listed else packed, count


def _shape(rows: Optional[torch.Tensor]):
    return None if rows is None else tuple(rows.shape)


def _llm_sequence(image: _Image, selections, feats: torch.Tensor, grid, projector,
                  host_kept: Optional[List[torch.Tensor]]) -> torch.Tensor:
    """The tokens the LLM sees for one image, in order: the base crop's (tokens the
    tower puts first under strategy "full", a merging method's prefix rows, the kept
    patches, its merged rows), then the map's kept tokens with their newlines, then
    the tiles' prefix and merged rows (VisionZip's official order)."""
    crops = selections[image.first_crop:image.first_crop + image.num_crops]
    device = feats.device
    base = crops[0].indices
    if image.layout is not None:    # the tile map is packed on the host
        mine = host_kept[image.first_crop:image.first_crop + image.num_crops]
        base = mine[0]
        positions = anyres.packed_positions(image.layout, base, mine[1:], image.newline)
        base_part, rest = positions[:base.numel()], positions[base.numel():]
    else:                           # one crop: positions stay on the device
        lead = feats.shape[0] - grid[0] * grid[1] - int(image.newline)
        base_part = lead + base.to(device) if lead == 0 else torch.cat([torch.arange(lead, device=device), lead + base.to(device)])
        rest = torch.arange(feats.shape[0] - int(image.newline), feats.shape[0], device=device)

    def rows(selection, key):
        extra = getattr(selection, key)
        return [] if extra is None else [projector(extra.to(feats.dtype)[None])[0].to(feats)]

    pieces = (rows(crops[0], "prefix") + [feats[base_part.to(device)]] + rows(crops[0], "merged")
              + [feats[rest.to(device)]]
              + [r for key in ("prefix", "merged") for crop in crops[1:] for r in rows(crop, key)])
    return torch.cat(pieces)


def _image_record(image, selections, requests, tokens_in, tokens_out, grid, seconds, select_seconds) -> dict:
    record = {"tokens_in": tokens_in, "tokens_out": tokens_out,
              "vision_ms": round(1000 * seconds, 3), "select_ms": round(1000 * select_seconds, 3)}
    if selections is None:
        return record
    crops = [crop_record(selections[c], grid[0] * grid[1] if requests[c].valid is None else int(requests[c].valid.sum()))
             for c in range(image.first_crop, image.first_crop + image.num_crops)]
    if len(crops) == 1:
        record.update(pivotal=crops[0]["pivotal"], complementary=crops[0]["complementary"])
    else:
        record["crops"] = crops
    return record


# -- the merge ------------------------------------------------------------------------------


def wrap_placeholder_mask(original):
    @functools.wraps(original)
    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features=None, **kwargs):
        masks = original(self, input_ids, inputs_embeds, image_features, **kwargs)
        session = _session
        if session is None:
            return masks
        # models with videos return (image mask, video mask) and are asked once per modality
        for index, (attribute, features) in enumerate((("pending_images", image_features),
                                                        ("pending_videos", kwargs.get("video_features")))):
            pending = getattr(session, attribute, None)
            if pending and features is not None:
                setattr(session, attribute, None)
                _arm_kept(self, (masks[index] if isinstance(masks, tuple) else masks)[..., 0], pending)
        return masks

    return get_placeholder_mask


def _arm_kept(model, placeholders: torch.Tensor, pending) -> None:
    """Arm the decoder to drop the placeholders of ``pending``'s tokens that were not kept.
    ``pending``: per image or video, (tokens made, positions kept (host), its stats record).
    The placeholder count of each prompt is the one value read from the device; the rest
    is worked out on the host or done in batch-wide device ops."""
    decoder = _shortening_decoder(model.language_model)
    whole = all(kept.numel() == n for n, kept, _ in pending)
    if whole and _session.llm is None:
        return      # nothing leaves the sequence: the host's prefill runs as it is (also in chunks)
    if whole and _session.stats is None:    # the decoder-side method needs only where the visual tokens are
        decoder.arm(torch.zeros_like(placeholders), placeholders, [0] * placeholders.shape[0])
        return
    per_row = placeholders.sum(dim=1).tolist()
    items = _per_placeholder_run(pending, per_row)
    starts = list(itertools.accumulate((n for n, _, _ in items), initial=0))     # in all prompts' placeholders
    row_ends = list(itertools.accumulate(per_row))
    removed = [0] * len(per_row)
    for (n, kept, record), start in zip(items, starts):
        row = bisect.bisect_right(row_ends, start)
        if bisect.bisect_right(row_ends, start + n - 1) != row:
            raise RuntimeError(f"the {n} placeholders of one image or video span two prompts")
        removed[row] += n - kept.numel()
        record.setdefault("sample", row)        # the first row, when generate() repeats rows
    # the placeholder of rank r (over all prompts, in order) reads entry r + 1 of the table
    table = _drop_table(items, starts).to(placeholders.device, non_blocking=True)
    drop = table[placeholders.flatten().cumsum(0)].view_as(placeholders) & placeholders
    decoder.arm(drop, placeholders, removed)


def _drop_table(items, starts: List[int]) -> torch.Tensor:
    """(1 + placeholders,) bool: entry 0 False, entry 1 + r whether the placeholder of
    rank r leaves the sequence; ``starts``: each item's first rank. Made where the kept
    positions are (host positions: on the host; device ones: there, without a wait)."""
    kept = [kept for _, kept, _ in items]
    device = kept[0].device if kept else torch.device("cpu")
    table = torch.ones(starts[-1] + 1, dtype=torch.bool, device=device)
    table[0] = False
    table[1 + repeated(starts[:-1], [k.numel() for k in kept], device) + torch.cat(kept).to(device)] = False
    return table


def repeated(values: List[int], counts: List[int], device) -> torch.Tensor:
    """Each of ``values`` ``counts`` times in a row: made on the host, sent to ``device`` without a wait."""
    return to_device(torch.tensor(values).repeat_interleave(torch.tensor(counts), output_size=sum(counts)), device)


def _per_placeholder_run(pending, per_row: List[int]) -> list:
    """The selected images in the order their placeholders appear. ``generate()``
    repeats each sample's rows (and images) for beam search or several return
    sequences after the features were made: the selections are repeated with them."""
    total = sum(entry[0] for entry in pending)
    if sum(per_row) == total:
        return pending
    repeat = sum(per_row) // total if total else 0
    if repeat < 2 or sum(per_row) != repeat * total or len(per_row) % repeat:
        raise RuntimeError(f"the prompts hold {sum(per_row)} image placeholders, the images made {total} tokens")
    runs, images = [], iter(pending)
    for first in range(0, len(per_row), repeat):
        sample, count = [], 0
        while count < per_row[first]:
            image = next(images)
            sample.append(image)
            count += image[0]
        runs += sample * repeat
    return runs


# -- the decoder ----------------------------------------------------------------------------


def _shortening_decoder(decoder) -> "_ShorteningHooks":
    hooks = _hooked.get(decoder)
    if hooks is None:
        hooks = _hooked[decoder] = _ShorteningHooks(decoder)
    session = _session
    if session is not None and session.llm is not None:
        # The LLM runtime takes the decoder's forward; these hooks run around it.
        llm_runtime.attach(decoder, session.llm)
        session.llm_models.add(decoder)
    return hooks


class _ShorteningHooks:
    """Hooks around one language model's forward: drop the armed positions at
    prefill, translate decode steps on a cache that holds a shortened prompt,
    time prefills. Hooks, not a replaced ``forward``: the decoder-side runtime
    (FitPrune, FastV, DART) owns that."""

    def __init__(self, decoder):
        self.decoder = decoder
        # the class's: the instance's forward may be the LLM runtime's wrapper
        self.signature = inspect.signature(type(decoder).forward)
        self.var_keyword = next((p.name for p in self.signature.parameters.values()
                                 if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        self.cache_key = "cache" if "cache" in self.signature.parameters else "past_key_values"
        self.armed = None        # (drop, visual, removed) for the next prefill: see arm
        self.running = None      # (compression or None, start time or None) of the forward in flight
        self.handles = [decoder.register_forward_pre_hook(self.before, with_kwargs=True),
                        decoder.register_forward_hook(self.after, with_kwargs=True)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def arm(self, drop: torch.Tensor, visual: torch.Tensor, removed: List[int]) -> None:
        """The next prefill drops ``drop`` and holds visual tokens at ``visual`` ((batch, length)
        bool each), ``removed[b]`` positions of prompt b (host integers); images and videos of
        the same prompts arm in turn and add up."""
        if self.armed is not None and self.armed[0].shape == drop.shape:
            drop, visual = drop | self.armed[0], visual | self.armed[1]
            removed = [a + b for a, b in zip(removed, self.armed[2])]
        self.armed = (drop, visual, removed)

    def before(self, module, args, kwargs):
        call = dict(self.signature.bind(module, *args, **kwargs).arguments)
        call.pop(next(iter(self.signature.parameters)))      # self
        call.update(call.pop(self.var_keyword, {}) if self.var_keyword else {})
        armed, self.armed = self.armed, None
        cache = call.get(self.cache_key)
        compression = restore = None
        if armed is not None:
            compression = self._prefill(call, *armed)
            restore = None if compression is None else compression.expand
        elif getattr(cache, _ATTR, None) is not None and cache.get_seq_length() > 0:
            restore = self._translate_decode(call, getattr(cache, _ATTR), cache)
        session = _session
        embeds = call.get("inputs_embeds")
        timed = (session is not None and session.pending and embeds is not None and embeds.shape[1] > 1
                 and (armed is not None or getattr(cache, _ATTR, None) is None))
        clocked = timed and session.stats is not None     # only a stats file waits for the device
        if clocked:
            sync(embeds)
        self.running = (compression, restore, time.perf_counter() if timed else None)
        return (), call

    def after(self, module, args, kwargs, out):
        (compression, restore, start), self.running = self.running, None
        session = _session
        if start is not None and session is not None:
            if session.stats is not None:
                sync(out[0])
            record = llm_runtime.last_record(self.decoder) if session.llm is not None else None
            for note in record.notes if record is not None else ():
                session.say_once(f"freePruner: {note}")
            session.flush(1000 * (time.perf_counter() - start), record)
        if restore is not None:
            out.last_hidden_state = restore(out.last_hidden_state)
        if compression is None:
            return out
        returned = getattr(out, self.cache_key, None)
        if returned is None:
            returned = getattr(out, "past_key_values", None)
        for holder in (kwargs.get(self.cache_key), returned):
            if holder is not None:
                setattr(holder, _ATTR, compression)
                setattr(holder, _NEXT, (_generate_call, compression.length))
        return out

    def _prefill(self, call, drop, visual, removed: List[int]) -> Optional[Compression]:
        """Shorten ``call`` in place; the compression, or None when nothing is dropped."""
        if not any(removed):      # host numbers: nothing leaves the sequence
            self._begin_llm_pruning(visual)
            return None
        embeds = call["inputs_embeds"]
        if embeds.shape[1] != drop.shape[1]:
            raise RuntimeError(f"the decoder got {embeds.shape[1]} positions, the merge marked {drop.shape[1]}")
        cache = call.get(self.cache_key)
        if cache is not None and cache.get_seq_length() > 0:
            raise RuntimeError("llava_freepruner prunes an image prompt only at its prefill (empty KV cache); "
                               f"the cache already holds {cache.get_seq_length()} positions")
        mask = _padding_mask(call.get("attention_mask"), drop.shape[1])
        compression = Compression.from_drop(drop, drop.shape[1] - min(removed), mask)
        call["inputs_embeds"] = compression.gather(embeds)
        prompt_mask = compression.compress_prompt_mask(mask)
        # every prompt dropped as many positions and none is padded: nothing to mask
        compression.unmasked = call.get("attention_mask") is None and len(set(removed)) == 1
        call["attention_mask"] = None if compression.unmasked else prompt_mask.to(
            mask.dtype if mask is not None else torch.long)
        call["position_ids"] = compression.prefill_positions(call.get("position_ids"))
        if call.get("cache_position") is not None:
            call["cache_position"] = call["cache_position"][:compression.width]
        if call.get("visual_pos_masks") is not None:
            _shorten_deepstack(call, compression, sum(removed))
        self._begin_llm_pruning(compression.gather(visual))
        return compression

    def _begin_llm_pruning(self, visual: torch.Tensor) -> None:
        """Hand the decoder-side policy (FitPrune, FastV, DART) the visual spans the decoder will see."""
        if _session is not None and _session.llm is not None:
            llm_runtime.begin_prefill(self.decoder, [_runs(row) for row in visual.tolist()])

    @staticmethod
    def _translate_decode(call, compression: Compression, cache):
        """Translate a step on a cache that holds a shortened prompt; the function that
        restores the output's length when the step's first positions were already cached."""
        if isinstance(call.get("attention_mask"), torch.Tensor) and call["attention_mask"].dim() == 4:
            # a 4-D mask of generate() for a static cache, built on the shortened cache's length:
            # the prompt's padding is known, every position after it is attended
            call["attention_mask"] = None
        cached = cache.get_seq_length()
        past_full = cached - compression.width + compression.length
        steps = _steps(call)
        call_of, position = getattr(cache, _NEXT, (None, None))
        # within one generate(), each step starts where the last one ended: no need to read the device
        caller_past = position if call_of is _generate_call and call_of is not None else _caller_past(call, steps)
        setattr(cache, _NEXT, (_generate_call, (past_full if caller_past is None else caller_past) + steps))
        skip = 0
        if caller_past == cached:
            # generate() cut a continuation (earlier turns + new text) by the cache's length,
            # which pruning shortened: its first positions are in the cache already
            skip = past_full - cached
            if skip >= steps:
                raise RuntimeError(f"this call continues a KV cache holding a pruned prompt ({cached} cached positions "
                                   f"stand for {past_full} of the caller's) with {steps} positions, none of them new")
            _drop_leading(call, skip)
            steps -= skip
        elif caller_past is not None:
            # the caller's own count: 4.57's static cache counts the slots filled in its first
            # row only, where padding (a zero embedding) does not count
            past_full = caller_past
        if call.get("attention_mask") is not None or not compression.unmasked:
            call["attention_mask"] = compression.decode_mask(call.get("attention_mask"), past_full + steps)
        call["position_ids"] = compression.decode_positions(call.get("position_ids"), past_full, steps)
        if call.get("cache_position") is not None:
            call["cache_position"] = call["cache_position"] - (compression.length - compression.width)
        if skip == 0:
            return None
        return lambda hidden: torch.cat([hidden.new_zeros(hidden.shape[0], skip, hidden.shape[2]), hidden], dim=1)


def _shorten_deepstack(call, compression: Compression, removed: int) -> None:
    """Qwen3-VL adds deepstack features (one row per visual position, in sequence order)
    to the hidden states of its first layers: the rows of the kept visual positions
    follow them. Only placeholders leave the sequence, so ``removed`` rows go."""
    visual = call["visual_pos_masks"]
    embeds = call.get("deepstack_visual_embeds")
    if embeds:
        kept = visual & ~compression.drop.to(visual.device)
        rank = visual.flatten().cumsum(0) - 1            # each visual position's row
        past_every_row = torch.iinfo(rank.dtype).max
        order = torch.where(kept.flatten(), rank, past_every_row).sort().values[:embeds[0].shape[0] - removed]
        call["deepstack_visual_embeds"] = [rows.index_select(0, order.to(rows.device)) for rows in embeds]
    call["visual_pos_masks"] = compression.gather(visual)


def _padding_mask(mask, length: int):
    """The 2-D (batch, length) mask of a prompt's first ``length`` positions. generate() hands
    a static (compilable) cache's decoder a 4-D mask instead: the prompt's last position sees
    every unpadded position, so its row is the 2-D mask (the decoder builds its own 4-D mask
    from the translated one)."""
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        return mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise RuntimeError(f"llava_freepruner translates 2-D or 4-D attention masks, got {type(mask).__name__} "
                           f"of shape {tuple(getattr(mask, 'shape', ()))}")
    row = mask[:, 0, -1, :length]
    return (row if row.dtype == torch.bool else row == 0).long()


def _steps(call) -> int:
    """Positions the decoder is given in this call."""
    return call["inputs_embeds"].shape[1] if call.get("inputs_embeds") is not None else call["input_ids"].shape[1]


def _caller_past(call, steps: int) -> Optional[int]:
    """Where the caller's positions of this call start, counted in the caller's prompt
    (full length); None when the call does not say (no cache positions, mask or position ids)."""
    if call.get("cache_position") is not None:                    # transformers 4.x
        return int(call["cache_position"][0])
    mask, positions = call.get("attention_mask"), call.get("position_ids")
    if mask is not None and mask.dim() == 2:
        return mask.shape[1] - steps
    if mask is None and positions is not None:                    # no mask: no padding, positions count from 0
        return int(positions[..., 0].max())
    return None


def _drop_leading(call, count: int) -> None:
    """Remove the first ``count`` positions of this call's inputs (the mask covers the whole sequence)."""
    for key in ("inputs_embeds", "input_ids"):
        if call.get(key) is not None:
            call[key] = call[key][:, count:]
    if call.get("position_ids") is not None:
        call["position_ids"] = call["position_ids"][..., count:]
    if call.get("cache_position") is not None:
        call["cache_position"] = call["cache_position"][count:]


def _runs(flags: List[bool]) -> List[tuple]:
    """[start, end) runs of True in one row."""
    runs, start = [], None
    for i, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs
