"""Tiny random-weight Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints, built offline.

The counterpart of ``hf_tiny`` for transformers' Qwen vision-language classes: a
byte-level BPE tokenizer trained on a few sentences (with Qwen's pre-tokenizer and
special tokens), a vision tower of the real geometry (14 px patches for Qwen2/2.5-VL,
16 px for Qwen3-VL; 2 x 2 patches merged into one LLM token; 2-frame temporal patches)
with few narrow layers, and a decoder with multimodal RoPE. Qwen2.5-VL keeps window
attention (8 x 8-patch windows, full attention in every second block), Qwen3-VL its
deepstack features. Answers mean nothing.

The processor is transformers' own class (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``
or ``Qwen3VLProcessor``) around the real ``Qwen2VLImageProcessor``, with small
``min_pixels`` / ``max_pixels`` so that an image makes tens of tokens:
``processor(images=..., text=...)`` expands ``<|image_pad|>`` exactly as for the
published checkpoints, and on transformers 5 also returns the ``mm_token_type_ids`` the
models need for their 3D positions. The video processors are torchvision-only: without
torchvision the processor is the same class with its video half left out
(``image_only_processor_class``), which refuses videos.

Differences between transformers 4.57 and 5.x handled here:

- M-RoPE: ``rope_scaling={"type": "mrope", "mrope_section": ...}`` plus ``rope_theta`` in
  4.57 (Qwen3-VL: ``rope_type="default"``, ``mrope_interleaved``); one ``rope_parameters``
  dict holding ``rope_theta`` from 5 on.
- Image processor: 4.57's ``Qwen2VLImageProcessor.__init__`` ignores a ``size`` argument
  (it keeps its default), so ``min_pixels`` / ``max_pixels`` are passed there too; 5.x
  without torchvision uses ``Qwen2VLImageProcessorPil`` (the class the name falls back to).
- Processor: 4.57 requires a ``Qwen2Tokenizer(Fast)`` and a video processor instance
  (``attributes``); 5.x reads its sub-processors from ``__init__``'s signature. 5.x
  returns ``mm_token_type_ids`` (the models need them for 3D positions: ``forward``
  refuses images without them, ``generate`` silently falls back to 1D positions); 4.57's
  processor leaves them out and its models find images from ``<|vision_start|>``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass

import torch

from .hf_tiny import _CORPUS, _spread_weights, train_bpe

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# As in Qwen's vocabulary: <|endoftext|> pads (and is the text model's bos), <|im_end|> ends a turn
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END, "<|vision_pad|>",
                  IMAGE_TOKEN, VIDEO_TOKEN)

# Qwen2's pre-tokenizer regex (transformers' Qwen2Tokenizer)
_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                      r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN_CORPUS = _CORPUS + ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "What is shown here?<|im_end|>\n<|im_start|>assistant\n"]

# Qwen2-VL / Qwen2.5-VL's template: a default system turn, list content of typed items
# ({"type": "image"|"video"|"text"}) or a plain string that holds its own placeholders
CHAT_TEMPLATE_QWEN2 = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3-VL's (instruct) template without tools: no default system turn
CHAT_TEMPLATE_QWEN3 = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image area range (pixels) after smart_resize: 2 x 2 .. 8 x 8 merged tokens per image
MIN_PIXELS = {"qwen2_vl": 56 * 56, "qwen2_5_vl": 56 * 56, "qwen3_vl": 64 * 64}
MAX_PIXELS = {"qwen2_vl": 224 * 224, "qwen2_5_vl": 224 * 224, "qwen3_vl": 256 * 256}
PATCH_SIZE = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
WINDOW_SIZE = 112                 # Qwen2.5-VL: 112 px = 8 x 8 patches = 4 x 4 merged tokens per window
# Text model: 64 wide, 4 heads of 16 (2 key/value heads); M-RoPE sections sum to head_dim / 2
HEAD_DIM = 16
MROPE_SECTION = {"qwen2_vl": [2, 3, 3], "qwen2_5_vl": [2, 3, 3], "qwen3_vl": [4, 2, 2]}


@dataclass(frozen=True)
class TinyQwen:
    kind: str = "qwen2_vl"          # "qwen2_vl", "qwen2_5_vl" or "qwen3_vl"
    vision_layers: int = 4
    llm_layers: int = 3
    seed: int = 0
    attn: str = "sdpa"              # or "eager"


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def has_torchvision() -> bool:
    """Whether torchvision loads (transformers' video processors, and from transformers 5
    the default image processor backend, need it)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:        # built for another torch: it fails to load
        return False
    return True


def build_tokenizer():
    """Qwen2's tokenizer class (its pre-tokenizer, NFC, byte-level BPE) over a 400-token
    vocabulary with Qwen's special tokens; pads on the left, ends turns with <|im_end|>."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend = train_bpe(SPECIAL_TOKENS, corpus=_QWEN_CORPUS, pre_tokenizer=pre)
    backend.normalizer = normalizers.NFC()
    # Qwen2TokenizerFast is Qwen2Tokenizer in transformers 5; the 4.x processors require one of the two
    tokenizer = Qwen2TokenizerFast(tokenizer_object=backend, unk_token=None, bos_token=None,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
                                   model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS
                                                                if t not in ("<|endoftext|>", "<|im_end|>")]})
    return tokenizer


def _token_ids(tokenizer) -> dict:
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", IMAGE_TOKEN), ("video_token_id", VIDEO_TOKEN),
        ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    assert all(isinstance(i, int) and i >= 0 for i in ids.values()), ids
    return ids


def _rope(kind: str) -> dict:
    """M-RoPE keywords of the text config: ``rope_scaling`` plus ``rope_theta`` before
    transformers 5, ``rope_parameters`` holding both from 5 on."""
    theta = 5_000_000.0 if kind == "qwen3_vl" else 1_000_000.0
    params = {"rope_type": "default", "mrope_section": list(MROPE_SECTION[kind])}
    if kind == "qwen3_vl":
        params["mrope_interleaved"] = True
    if _transformers_major() >= 5:
        return {"rope_parameters": {**params, "rope_theta": theta}}
    if kind != "qwen3_vl":
        params = {"type": "mrope", "mrope_section": params["mrope_section"]}     # as Qwen2(.5)-VL's config.json
    return {"rope_scaling": params, "rope_theta": theta}


def _text_config(spec: TinyQwen, tokenizer) -> dict:
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=spec.llm_layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **_rope(spec.kind))
    if spec.kind == "qwen3_vl":
        text.update(head_dim=HEAD_DIM, hidden_act="silu", attention_bias=False)
    return text


def _vision_config(spec: TinyQwen) -> dict:
    common = dict(depth=spec.vision_layers, num_heads=2, in_channels=3, patch_size=PATCH_SIZE[spec.kind],
                  spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    if spec.kind == "qwen2_vl":
        # embed_dim: the tower's width; hidden_size: the merger's output (the LLM's width)
        return dict(common, embed_dim=32, hidden_size=64, mlp_ratio=4, hidden_act="quick_gelu")
    if spec.kind == "qwen2_5_vl":
        # full attention in every second block, as in every eighth of the 32 real ones
        return dict(common, hidden_size=32, intermediate_size=64, out_hidden_size=64, hidden_act="silu",
                    window_size=WINDOW_SIZE, fullatt_block_indexes=list(range(1, spec.vision_layers, 2)),
                    tokens_per_second=2)
    # Qwen3-VL: a learned 48 x 48 position table (interpolated to the grid), deepstack
    # features of blocks 1 and 2 added to the first LLM layers' hidden states
    deepstack = [i for i in (1, 2) if i < spec.vision_layers][:spec.llm_layers]
    return dict(common, hidden_size=32, intermediate_size=64, out_hidden_size=64, hidden_act="gelu_pytorch_tanh",
                num_position_embeddings=48 * 48, deepstack_visual_indexes=deepstack)


def _classes(kind: str):
    """(config class, model class, processor class) of ``kind``."""
    import transformers

    names = {"qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
             "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
             "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor")}
    if kind not in names:
        raise ValueError(f"TinyQwen.kind={kind!r}: expected one of {', '.join(map(repr, KINDS))}")
    return tuple(getattr(transformers, name) for name in names[kind])


def build_config(spec: TinyQwen, tokenizer):
    config_cls, _, _ = _classes(spec.kind)
    config = config_cls(vision_config=_vision_config(spec), text_config=_text_config(spec, tokenizer),
                        tie_word_embeddings=False, **_token_ids(tokenizer))
    config._attn_implementation = spec.attn
    return config


def image_processor(kind: str):
    """transformers' ``Qwen2VLImageProcessor`` (all three kinds use it) at this model's
    patch size: images resized to a multiple of 2 patches, MIN_PIXELS..MAX_PIXELS in area.
    transformers 5 without torchvision: its PIL backend (``Qwen2VLImageProcessorPil``),
    the class ``Qwen2VLImageProcessor`` falls back to there."""
    import transformers

    if _transformers_major() >= 5 and not has_torchvision():
        cls = transformers.Qwen2VLImageProcessorPil
    else:
        cls = transformers.Qwen2VLImageProcessor
    extra = {}
    if kind == "qwen3_vl":          # Qwen3-VL normalises as SigLIP does
        extra = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if _transformers_major() < 5:
        # transformers 4.57's __init__ replaces a given ``size`` by its default; min/max_pixels are kept
        extra.update(min_pixels=MIN_PIXELS[kind], max_pixels=MAX_PIXELS[kind])
    return cls(size={"shortest_edge": MIN_PIXELS[kind], "longest_edge": MAX_PIXELS[kind]},
               patch_size=PATCH_SIZE[kind], temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE, **extra)


def video_processor(kind: str):
    """The video processor of ``kind`` at this model's geometry (needs torchvision)."""
    import transformers

    common = dict(patch_size=PATCH_SIZE[kind], temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE)
    if kind == "qwen3_vl":
        # Qwen3-VL bounds the pixels of the whole clip (frames x height x width)
        return transformers.Qwen3VLVideoProcessor(
            size={"shortest_edge": 2 * MIN_PIXELS[kind], "longest_edge": 8 * MAX_PIXELS[kind]},
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], **common)
    return transformers.Qwen2VLVideoProcessor(
        size={"shortest_edge": MIN_PIXELS[kind], "longest_edge": MAX_PIXELS[kind]}, **common)


_IMAGE_ONLY = {}


def image_only_processor_class(processor_cls):
    """``processor_cls`` (a Qwen VL processor class) without its video processor: the
    same ``__call__``, placeholder expansion, chat template and ``mm_token_type_ids``;
    videos are refused. ``save_pretrained`` writes it under the original class's name."""
    if processor_cls in _IMAGE_ONLY:
        return _IMAGE_ONLY[processor_cls]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # transformers 4.x takes the sub-processors from ``attributes``, 5.x from this signature
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError(f"{type(self).__name__} has no video processor (transformers' video processors need "
                             f"torchvision); {processor_cls.__name__} with one takes videos")
        return processor_cls.__call__(self, images=images, text=text, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        saved = processor_cls.save_pretrained(self, save_directory, *args, **kwargs)
        _rename_processor_class(save_directory, type(self).__name__, processor_cls.__name__)
        return saved

    attrs = {"__init__": __init__, "__call__": __call__, "save_pretrained": save_pretrained,
             "__module__": __name__, "__doc__": f"{processor_cls.__name__} without its video processor.",
             "attributes": ["image_processor", "tokenizer"]}
    cls = type(processor_cls.__name__ + "ImageOnly", (processor_cls,), attrs)
    cls.__qualname__ = cls.__name__
    _IMAGE_ONLY[processor_cls] = cls
    return cls


def _rename_processor_class(folder: str, old: str, new: str) -> None:
    """Saved configs name ``new`` (the real processor class) where they named ``old``."""
    for name in os.listdir(folder):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        with open(path) as handle:
            text = handle.read()
        if f'"{old}"' in text:
            data = json.loads(text)
            _replace_values(data, old, new)
            with open(path, "w") as handle:
                json.dump(data, handle, indent=2, sort_keys=True, ensure_ascii=False)
                handle.write("\n")


def _replace_values(data, old, new):
    for key, value in data.items():
        if value == old:
            data[key] = new
        elif isinstance(value, dict):
            _replace_values(value, old, new)


def build_processor(kind: str, tokenizer=None, full: bool | None = None):
    """transformers' processor of ``kind``: with a video processor where torchvision
    imports (``full=None``) or ``full=True``; image-only otherwise."""
    _, _, processor_cls = _classes(kind)
    tokenizer = tokenizer or build_tokenizer()
    template = CHAT_TEMPLATE_QWEN3 if kind == "qwen3_vl" else CHAT_TEMPLATE_QWEN2
    if full is None:
        full = has_torchvision()
    if full:
        return processor_cls(image_processor=image_processor(kind), tokenizer=tokenizer,
                             video_processor=video_processor(kind), chat_template=template)
    return image_only_processor_class(processor_cls)(image_processor=image_processor(kind), tokenizer=tokenizer,
                                                     chat_template=template)


def build(spec: TinyQwen = TinyQwen()):
    """(model in eval mode, processor) for ``spec``, random weights from ``spec.seed``."""
    _, model_cls, _ = _classes(spec.kind)
    if spec.attn not in ("sdpa", "eager"):
        raise ValueError(f"TinyQwen.attn={spec.attn!r}: expected 'sdpa' or 'eager'")
    tokenizer = build_tokenizer()
    config = build_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = model_cls(config).eval()
    _spread_weights(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, config.get_text_config().bos_token_id]
    return model, build_processor(spec.kind, tokenizer)


def save(spec: TinyQwen, folder: str) -> str:
    """Write model and processor to ``folder``: ``AutoModelForImageTextToText`` and the
    model class load it; ``AutoProcessor`` loads the processor where torchvision imports,
    ``load_processor`` anywhere."""
    model, processor = build(spec)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def load_processor(folder: str):
    """The processor ``save`` wrote: ``AutoProcessor`` where torchvision imports, the
    image-only processor class otherwise."""
    from transformers import AutoConfig, AutoProcessor

    if has_torchvision():
        return AutoProcessor.from_pretrained(folder)
    kind = AutoConfig.from_pretrained(folder).model_type
    return image_only_processor_class(_classes(kind)[2]).from_pretrained(folder)
