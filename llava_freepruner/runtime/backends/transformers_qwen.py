"""Backend for transformers' Qwen-VL classes (``Qwen2VLModel``, ``Qwen2_5_VLModel``,
``Qwen3VLModel``, ``Qwen3VLMoeModel``): images and videos pruned after the patch merger.

The tower sees every image and video of a call as one flat sequence of patches,
each 2 x 2 merge unit stored as four consecutive rows; its merger turns each unit
into one token for the LLM (one ``<|image_pad|>`` / ``<|video_pad|>`` each).
Selection runs on those merged tokens:

- every image, and every temporal slice of a video (a frame; images have one),
  is a crop whose cells are its merged tokens in raster order, keeping
  round(r x cells) of them (``FREEPRUNER_VIDEO=temporal``: among the cells that
  differ from the previous frame's, as on the LLaVA video classes);
- a method reads the attention of the tower's layers pooled to cells
  (:class:`~llava_freepruner.runtime.methods.pooled.UnitPooledView`: a cell attends like
  the mean of its four patches and receives what they receive). Qwen2.5-VL's
  windowed blocks see only their window, so a method is shown the tower's
  full-attention blocks (``fullatt_block_indexes``) as its layers, with the
  window reordering undone. There is no [CLS]: methods that rank by it use the
  attention each cell receives. A method that reads features reads the merged
  tokens themselves (what the LLM receives);
- crops of the same size are selected together, in one batched pass.

The features stay in place: a kept token keeps its placeholder, its (t, h, w)
M-RoPE position ids and its Qwen3-VL deepstack rows; a merging method's row
(VisionZip) takes the place of the token it grew from. The placeholder-mask and
decoder patches of :mod:`.transformers_llava` then drop the other placeholders
from the sequence, keep the full prompt's M-RoPE ids for the rest (text after an
image keeps its own; decode steps continue from the caller's ids and
``rope_deltas``), and drop the deepstack rows of the dropped tokens.

Decoder-side methods (FitPrune, FastV, DART, alone or after a vision method) run
in the language model through the same decoder hooks (:mod:`llava_freepruner.runtime.llm`
handles M-RoPE tables and Qwen3-VL's deepstack rows). Refused by name when the
model is built, before its weights load: an attention implementation other than
``sdpa`` or ``eager``, and a FastV layer or FitPrune recipe the decoder's depth
does not have.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .. import quantization, video
from ...config import ConfigError
from ..llm import decoders as llm_decoders
from ..methods.base import CropRequest, SelectionContext, QueryKeyView, keeps_everything, select, to_device
from ..methods.pooled import PooledMethod
from ..session import Session
from . import transformers_llava

# host module -> the model class that merges visual features
HOST_CLASSES = {
    "transformers.models.qwen2_vl.modeling_qwen2_vl": "Qwen2VLModel",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": "Qwen2_5_VLModel",
    "transformers.models.qwen3_vl.modeling_qwen3_vl": "Qwen3VLModel",
    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe": "Qwen3VLMoeModel",
    "transformers.models.qwen3_5.modeling_qwen3_5": "Qwen3_5Model",
    "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe": "Qwen3_5MoeModel",
}
_KINDS = {  # modality -> (pixels argument, grid argument, session attribute of its pending tokens)
    "image": ("pixel_values", "image_grid_thw", "pending_images"),
    "video": ("pixel_values_videos", "video_grid_thw", "pending_videos"),
}


def install(session: Session, host) -> None:
    import transformers

    transformers_llava.check_version(transformers.__version__)
    quantization.refuse_for_caller_loaded(session.config)
    transformers_llava.share_session(session)
    name = HOST_CLASSES[host.__name__]
    cls = getattr(host, name)
    patch = transformers_llava.patch
    patch(cls, "__init__", _wrap_init(cls.__init__))
    for kind in _KINDS:
        method = f"get_{kind}_features"
        patch(cls, method, _wrap_features(getattr(cls, method), kind))
    patch(cls, "get_placeholder_mask", transformers_llava.wrap_placeholder_mask(cls.get_placeholder_mask))
    generator = getattr(host, name.replace("Model", "ForConditionalGeneration"))
    patch(generator, "generate", transformers_llava.wrap_generate(generator.generate))


def uninstall() -> None:
    transformers_llava.uninstall()


def refuse_unservable(session: Session, cls, config=None) -> None:
    """What the plugin cannot do on a Qwen-VL model, refused by name (``config``: the model's,
    when known: at ``__init__``, before any weight loads)."""
    if session.vision is not None and session.vision.needs_instruction:
        raise ConfigError(f"FREEPRUNER_METHOD={session.config.method} scores tokens against the prompt's "
                          f"instruction in the joint space of a CLIP checkpoint's vision and text halves; "
                          f"{cls.__name__}'s vision tower has no CLIP text half. Choose a method that needs no text.")
    if session.llm is not None and config is not None:
        _refuse_for_the_decoder(session, cls, config.get_text_config())


def _refuse_for_the_decoder(session: Session, cls, text) -> None:
    """A decoder-side method (FitPrune, FastV, DART) runs its own attention at the layers
    that prune, with SDPA or eager attention only, on every layer of the decoder."""
    method = session.config.method
    hybrid = sorted(set(getattr(text, "layer_types", None) or ()) - {"full_attention", "sliding_attention"})
    if hybrid:
        # Qwen3.5: a linear-attention layer carries a recurrent state over the whole prefix;
        # the pruning layers and scores are written for softmax attention over a KV cache
        raise ConfigError(f"FREEPRUNER_METHOD={method} prunes inside the LLM, which needs softmax attention in "
                          f"every decoder layer; {cls.__name__}'s decoder also has {', '.join(hybrid)} layers. "
                          "Choose a vision-side method (FREEPRUNER_METHOD=freepruner, visionzip, ...).")
    implementation = getattr(text, "_attn_implementation", None)
    if implementation is not None and implementation not in llm_decoders.ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"FREEPRUNER_METHOD={method} prunes inside the LLM, whose pruning layers compute their "
                          f"own attention in the 'sdpa' or 'eager' form; {cls.__name__} was asked for "
                          f"attn_implementation={implementation!r}. Load it with attn_implementation='sdpa' (or "
                          "'eager'), or choose a vision-side method.")
    try:
        session.llm.check_model(text.num_hidden_layers)
    except ValueError as err:
        raise ConfigError(f"FREEPRUNER_METHOD={method}: {err}.") from None


def _wrap_init(original):
    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        """Refusals the configuration alone decides, before any weight is made or loaded."""
        session = transformers_llava.current_session()
        if session is not None and session.active:
            refuse_unservable(session, type(self), config)
        original(self, config, *args, **kwargs)

    return __init__


# -- the plan: which crops each image or video makes ------------------------------------------


@dataclass
class _Media:
    """One image or video: ``frames`` temporal slices of ``cells`` merged tokens each."""

    frames: int
    grid: Tuple[int, int]        # merged tokens per frame side: rows, columns
    first_crop: int
    first_unit: int              # its first merge unit in the tower's sequence

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def tokens(self) -> int:
        return self.frames * self.cells


def _plan(grid: List[List[int]], merge: int) -> List[_Media]:
    media, crops, units = [], 0, 0
    for t, h, w in grid:
        item = _Media(int(t), (int(h) // merge, int(w) // merge), crops, units)
        media.append(item)
        crops += item.frames
        units += item.tokens
    return media


@dataclass
class _Group:
    """Crops of one size, selected together: their context and their rows in the tower's sequence."""

    grid: Tuple[int, int]
    crops: List[int]             # crop numbers over the call
    units: List[int]             # each crop's first merge unit
    ctx: SelectionContext
    rows: Optional[torch.Tensor] = None   # (crops, patches) rows of the crops' patches, raster order


def _groups(media: List[_Media], requests: List[CropRequest], num_layers: int, device) -> List[_Group]:
    found: Dict[Tuple[int, int], _Group] = {}
    for item in media:
        for frame in range(item.frames):
            group = found.get(item.grid)
            if group is None:
                ctx = SelectionContext(requests=[], grid=item.grid, num_prefix=0, num_layers=num_layers,
                                       feature_layer=num_layers - 1, device=device)
                group = found[item.grid] = _Group(item.grid, [], [], ctx)
            crop = item.first_crop + frame
            group.crops.append(crop)
            group.units.append(item.first_unit + frame * item.cells)
            group.ctx.requests.append(requests[crop])
    return list(found.values())


# -- the capture ------------------------------------------------------------------------------


class _TowerCapture:
    """While active, hands each group's method the pooled attention of the layers it asks
    for. A method's layers are the tower's full-attention blocks (all of them but on
    Qwen2.5-VL); the queries and keys are recomputed in fp32 from the block's own
    projections and rotary embeddings, rows put back in raster order. ``grid_thw``: a
    host copy of the grid (the window order is worked out on the host without reading the device)."""

    def __init__(self, tower, methods: List[PooledMethod], groups: List[_Group], grid_thw: torch.Tensor):
        self.tower, self.methods, self.groups = tower, methods, groups
        self.layers = _full_attention_blocks(tower)
        self.unit = tower.spatial_merge_size ** 2
        self.grid_thw = grid_thw
        self._handles = []

    def __enter__(self) -> "_TowerCapture":
        requested = set()
        for method, group in zip(self.methods, self.groups):
            if not keeps_everything(group.ctx):
                requested.update(method.attention_layers(len(self.layers), len(self.layers) - 1))
        if not requested:
            return self
        self._place_rows()
        for layer in sorted(requested):
            self._hook(layer, self.tower.blocks[self.layers[layer]].attn)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _place_rows(self) -> None:
        """Each group's patch rows in the tower's sequence, raster order (undoing Qwen2.5-VL's window order)."""
        position = None
        window = _window_index(self.tower, self.grid_thw)
        if window is not None:      # merge unit u sits at position[u] while the blocks run (host tensors)
            position = torch.argsort(window)
        sub = torch.arange(self.unit)
        for group in self.groups:
            cells = group.grid[0] * group.grid[1]
            units = torch.tensor(group.units)[:, None] + torch.arange(cells)
            if position is not None:
                units = position[units]
            rows = (units[..., None] * self.unit + sub).flatten(1)
            group.rows = to_device(rows, group.ctx.device)

    def _hook(self, layer: int, attention) -> None:
        captured = {}
        rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision

        def keep_rotary(module, args, kwargs):
            captured["rotary"] = kwargs.get("position_embeddings")

        def keep_qkv(module, args, output):
            captured["qkv"] = output

        def observe(module, args, output):
            qkv = captured.pop("qkv")
            cos, sin = captured.pop("rotary")
            heads = module.num_heads
            q, k, _ = qkv.reshape(qkv.shape[0], 3, heads, -1).unbind(1)
            q, k = rotary(q, k, cos, sin)
            scale = q.shape[-1] ** -0.5
            for method, group in zip(self.methods, self.groups):
                if group.rows is None or keeps_everything(group.ctx):
                    continue
                # (crops, heads, patches, head_dim)
                qg, kg = (x[group.rows].permute(0, 2, 1, 3) for x in (q, k))
                method.observe(layer, QueryKeyView(qg.float() * scale, kg), group.ctx)

        self._handles += [
            attention.register_forward_pre_hook(keep_rotary, with_kwargs=True),
            attention.qkv.register_forward_hook(keep_qkv),
            attention.register_forward_hook(observe),
        ]


def _full_attention_blocks(tower) -> List[int]:
    """Blocks whose attention spans a whole image or frame."""
    windowed = getattr(tower, "fullatt_block_indexes", None)
    return sorted(windowed) if windowed is not None else list(range(len(tower.blocks)))


def _window_index(tower, grid_thw: torch.Tensor) -> Optional[torch.Tensor]:
    """Qwen2.5-VL's order of merge units inside its blocks (None: raster order)."""
    if getattr(tower, "fullatt_block_indexes", None) is None:
        return None
    if hasattr(tower, "get_window_index"):           # transformers 4.57
        return tower.get_window_index(grid_thw)[0]
    from transformers.vision_utils import get_vision_window_index

    return get_vision_window_index(grid_thw, spatial_merge_size=tower.spatial_merge_size,
                                   window_size=tower.window_size, patch_size=tower.patch_size)[0]


# -- the patch --------------------------------------------------------------------------------


class _Output:
    """The host's output of ``get_*_features``: per-item features (and Qwen3-VL's deepstack)."""

    def __init__(self, output):
        self.output = output
        # 5.x: an output object; Qwen3-VL on 4.57: (features, deepstack list); else the features
        self.kind = ("object" if hasattr(output, "pooler_output") else
                     "pair" if isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], list) else
                     "features")
        if self.kind == "object":
            self.features = list(output.pooler_output)
        else:
            self.features = list(output[0] if self.kind == "pair" else output)

    def with_features(self, features: List[torch.Tensor]):
        if self.kind == "object":
            self.output.pooler_output = tuple(features)
            return self.output
        return (tuple(features), self.output[1]) if self.kind == "pair" else tuple(features)


def _wrap_features(original, kind: str):
    pixels_key, grid_key, pending_key = _KINDS[kind]

    @functools.wraps(original)
    def get_features(self, *args, **kwargs):
        session = transformers_llava.current_session()
        if session is None or not session.active or _encoding:
            return original(self, *args, **kwargs)
        call = inspect.signature(original).bind(self, *args, **kwargs).arguments
        refuse_unservable(session, type(self), self.config)      # the plugin may have come after the model
        grid = call[grid_key].tolist()       # the plugin's one read of it (the host reads it too, to split its output)
        tower = self.visual
        media = _plan(grid, tower.spatial_merge_size)
        config = session.config
        requests = [CropRequest(config.budget(item.cells)) for item in media for _ in range(item.frames)]
        temporal = kind == "video" and config.video_mode == "temporal"
        if session.vision is None or (not temporal and all(r.budget == m.cells for m in media
                                                           for r in requests[m.first_crop:m.first_crop + m.frames])):
            output = _encode(original, self, args, kwargs)
            _note_whole(session, media, pending_key)
            return output
        _announce(session, media[0])
        groups = _groups(media, requests, len(_full_attention_blocks(tower)), call[pixels_key].device)
        methods = [PooledMethod(session.vision, unit=tower.spatial_merge_size ** 2, pool_hidden=False)
                   for _ in groups]
        with _TowerCapture(tower, methods, groups, torch.tensor(grid)):
            output = _encode(original, self, args, kwargs)
        result = _Output(output)
        if temporal:
            _narrow_to_novel(media, groups, result.features, config.tau)
        selections = _select(groups, methods, media, result.features)
        kept_per_item, features = _keep_in_place(media, selections, result.features)
        pending = []
        for item, kept in zip(media, kept_per_item):
            record = {"tokens_in": item.tokens, "tokens_out": int(kept.numel())}
            if kind == "video":
                record.update(kind="video", frames=item.frames)
            session.record(record)
            pending.append((item.tokens, kept, record))
        setattr(session, pending_key, pending)
        return result.with_features(features)

    return get_features


_encoding = False      # inside the host's get_*_features: Qwen3-VL encodes videos through get_image_features


def _encode(original, model, args, kwargs):
    global _encoding
    _encoding = True
    try:
        return original(model, *args, **kwargs)
    finally:
        _encoding = False


def _note_whole(session: Session, media: List[_Media], pending_key: str) -> None:
    """Every token of every item stays: the merge has nothing to drop."""
    pending, positions = [], torch.arange(max(item.tokens for item in media))
    for item in media:
        record = {"tokens_in": item.tokens, "tokens_out": item.tokens}
        session.record(record)
        pending.append((item.tokens, positions[:item.tokens], record))
    setattr(session, pending_key, pending)


def _announce(session: Session, first: _Media) -> None:
    config = session.config
    rule = (f"at most {config.tokens}" if config.tokens is not None
            else f"round({config.ratio:g} x its merged tokens)")
    session.say_once(f"freePruner: {config.vision_method} keeping {rule} of every image and video frame "
                     f"(the first: {config.budget(first.cells)} of {first.cells}).")


def _narrow_to_novel(media: List[_Media], groups: List[_Group], features, tau: float) -> None:
    """FREEPRUNER_VIDEO=temporal: each frame chooses among the cells that differ from the previous frame's."""
    for group in groups:
        requests = list(group.ctx.requests)
        slot = {crop: i for i, crop in enumerate(group.crops)}
        for item, feats in zip(media, features):
            if item.frames < 2 or item.first_crop not in slot:
                continue
            redundant = video.temporal_redundancy(feats.reshape(item.frames, item.cells, -1), tau)
            mine = [slot[item.first_crop + f] for f in range(item.frames)]
            for i, narrowed in zip(mine, video.novel_requests([requests[i] for i in mine], redundant)):
                requests[i] = narrowed
        group.ctx.requests = requests


def _select(groups: List[_Group], methods: List[PooledMethod], media: List[_Media], features) -> list:
    """Every crop's selection, group by group; a method that reads features reads the merged tokens."""
    frames = [feats.reshape(item.frames, item.cells, -1) for item, feats in zip(media, features)]
    crop_rows = [frame for item_frames in frames for frame in item_frames]
    chosen = [None] * len(crop_rows)
    for method, group in zip(methods, groups):
        ctx = group.ctx
        if method.needs_hidden:
            ctx.hidden = torch.stack([crop_rows[c] for c in group.crops])
        ctx.output_dtype = crop_rows[group.crops[0]].dtype
        for crop, selection in zip(group.crops, select(method, ctx)):
            chosen[crop] = selection
    return chosen


def _keep_in_place(media: List[_Media], selections, features) -> Tuple[list, list]:
    """Per item, its kept positions in its own tokens (ascending, on the device) and its
    features with every merged row put in the place of the token it grew from. A fixed
    number of ops whatever the batch: an image without merged rows keeps its selection's
    indices as they are; frames and merged rows are placed for every crop at once, at the
    crop's offset in the call's tokens."""
    if any(selection.prefix is not None for selection in selections):
        raise RuntimeError(f"{type(selections[0]).__name__} with prefix rows on a tower without [CLS]")
    device = features[0].device
    merging = [selection for selection in selections if selection.merged is not None]
    if not merging and all(item.frames == 1 for item in media):
        return [selections[item.first_crop].indices.to(device) for item in media], list(features)
    starts = [item.first_unit + frame * item.cells for item in media for frame in range(item.frames)]
    parts = [(selection.indices, start) for selection, start in zip(selections, starts)]
    parts += [(selection.merged_at, start) for selection, start in zip(selections, starts)
              if selection.merged is not None]
    positions = _cat([part.to(device) for part, _ in parts]) + transformers_llava.repeated(
        [start for _, start in parts], [part.numel() for part, _ in parts], device)
    if merging:
        merged_at = positions[sum(selection.indices.numel() for selection in selections):]
        rows = _cat([selection.merged for selection in merging]).to(features[0])
        features = _cat(list(features)).index_copy(0, merged_at, rows).split([item.tokens for item in media])
        positions = torch.sort(positions).values      # crops ascend in the call: one sort orders each
    per_crop = [s.indices.numel() + (0 if s.merged is None else s.merged_at.numel()) for s in selections]
    kept = [sum(per_crop[item.first_crop:item.first_crop + item.frames]) for item in media]
    positions = positions - transformers_llava.repeated([item.first_unit for item in media], kept, device)
    return list(positions.split(kept)), list(features)


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
