"""Published configurations of real LLaVA checkpoints, as data.

``--random-weights NAME`` builds one of these with random weights, so the
benchmark measures the real shapes without downloading anything. Upstream
llava's names are the keys of ``ARCHITECTURES``; transformers' conversions
(``llava-hf/*``) are named in ``HF_CHECKPOINTS`` and share those shapes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

# openai/clip-vit-large-patch14-336, the tower of every LLaVA-1.5 / 1.6 checkpoint.
CLIP_VIT_L_14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, num_channels=3, projection_dim=768,
    hidden_act="quick_gelu", layer_norm_eps=1e-5,
)

CLIP_IMAGE_PROCESSOR = dict(
    size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
)

_LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32)
_LLAMA_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=40)

_VICUNA = dict(
    vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
    bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0, tie_word_embeddings=False,
)

_LLAVA_1_5 = dict(
    mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=1024,
    mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
    mm_use_im_start_end=False, mm_use_im_patch_token=False, mm_patch_merge_type="flat",
    image_aspect_ratio="pad", tokenizer_model_max_length=2048, tokenizer_padding_side="right",
)

_LLAVA_1_6 = dict(
    _LLAVA_1_5, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
    image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    unfreeze_mm_vision_tower=True, tokenizer_model_max_length=4096,
)

# Test shapes, not checkpoints: the real layouts (576 patches per crop, 32 decoder
# layers, so FitPrune's official recipes apply) at widths a CPU runs in milliseconds.
# The "deep" one keeps the tower's 24 layers too: every layer a method reads is
# there, so its op counts (bench --count-ops) are those of the real model.
_TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=32,
                   num_attention_heads=4, num_key_value_heads=4)
_TINY_CLIP = dict(CLIP_VIT_L_14_336, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)

ARCHITECTURES = {
    "llava-v1.5-7b": dict(_VICUNA, **_LLAMA_7B, **_LLAVA_1_5),
    "llava-v1.5-13b": dict(_VICUNA, **_LLAMA_13B, **_LLAVA_1_5),
    "llava-v1.6-7b": dict(_VICUNA, **_LLAMA_7B, **_LLAVA_1_6),   # llava-v1.6-vicuna-7b
    "tiny-llava-v1.5": dict(_VICUNA, **_TINY_LLAMA, **dict(_LLAVA_1_5, mm_hidden_size=64)),
    "tiny-llava-v1.6": dict(_VICUNA, **_TINY_LLAMA, **dict(_LLAVA_1_6, mm_hidden_size=64)),
    "tiny-deep-llava-v1.5": dict(_VICUNA, **_TINY_LLAMA, **dict(_LLAVA_1_5, mm_hidden_size=64)),
}

# Vision tower of each architecture (CLIP ViT-L/14-336 unless named here).
_TOWERS = {"tiny-llava-v1.5": _TINY_CLIP, "tiny-llava-v1.6": _TINY_CLIP,
           "tiny-deep-llava-v1.5": dict(_TINY_CLIP, num_hidden_layers=24)}

# transformers' conversions of the same checkpoints (llava-hf/<name>/config.json): the
# image placeholder is id 32000, appended to Vicuna's ids, and the embedding grows to
# 32064 rows.
HF_CHECKPOINTS = {
    "llava-1.5-7b-hf": "llava-v1.5-7b",
    "llava-1.5-13b-hf": "llava-v1.5-13b",
    "llava-v1.6-vicuna-7b-hf": "llava-v1.6-7b",
    "tiny-llava-1.5-hf": "tiny-llava-v1.5",
    "tiny-llava-v1.6-hf": "tiny-llava-v1.6",
    "tiny-deep-llava-1.5-hf": "tiny-deep-llava-v1.5",
}
# transformers' video classes: name -> (model_type, the upstream entry whose decoder and
# tower they share, the tower's image size). Video-LLaVA-7B is Vicuna-7B with LanguageBind's
# towers, CLIP ViT-L/14 at 224 px (16 x 16 patches + [CLS], the defaults of transformers'
# VideoLlavaConfig); LLaVA-NeXT-Video-7B is LLaVA-1.6-Vicuna-7B with 2 x 2 average pooling per
# frame. Placeholder ids are those of the published configs (VideoLlavaConfig and
# LlavaNextVideoConfig defaults).
VIDEO_CHECKPOINTS = {
    "video-llava-7b-hf": ("video_llava", "llava-v1.5-7b", 224),
    "llava-next-video-7b-hf": ("llava_next_video", "llava-v1.6-7b", 336),
    "tiny-video-llava-hf": ("video_llava", "tiny-llava-v1.5", 224),
    "tiny-llava-next-video-hf": ("llava_next_video", "tiny-llava-v1.6", 336),
}
HF_VIDEO_TOKEN_IDS = {"video_llava": dict(image_token_id=32000, video_token_id=32001),
                      "llava_next_video": dict(image_token_id=32001, video_token_id=32000)}


# transformers' Qwen-VL classes, as published (name -> (model_type, vision config fields, text
# config fields)). Checked against printed module trees and config.json files of the checkpoints,
# since transformers' config defaults differ (Qwen2_5_VLVisionConfig() has hidden_size 3584 and
# tokens_per_second 4; Qwen2_5_VLConfig()'s text part is the 72B's):
# - Qwen2.5-VL-7B-Instruct: tower 32 blocks of 1280 (16 heads), SwiGLU 3420, 112 px windows with
#   full attention in blocks 7, 15, 23, 31; merger 4 x 1280 -> 5120 -> 3584; decoder Qwen2-7B:
#   3584 wide, 28 layers, 28 heads, 4 key/value heads (k_proj 3584 -> 512), SwiGLU 18944, vocabulary
#   152064, M-RoPE sections 16/24/24, rope theta 1e6 (the module tree printed in
#   acproject/duorou docs/qwen2.5vl_graph.md; the published config.json);
# - Qwen2-VL-7B-Instruct: tower 32 blocks of 1280 (16 heads), quick-GELU MLP 4 x 1280, no windows;
#   the same decoder (zhenhua32/Qwen2-VL READ.md);
# - Qwen3-VL-8B-Instruct: tower 27 blocks of 1152 (16 heads), GELU MLP 4304, 16 px patches, a 48 x 48
#   learned position table, deepstack features of blocks 8, 16, 24; decoder Qwen3-8B: 4096 wide,
#   36 layers, 32 heads of 128, 8 key/value heads, SwiGLU 12288, vocabulary 151936, interleaved
#   M-RoPE 24/20/20, rope theta 5e6 (Ascend MindSpeed-MM examples/qwen3vl/model_8B.json; the
#   text_config of a Qwen3-VL-8B fine-tune's config.json, huggingface.co/Steinate/Cortex).
# Built from these fields, each model has exactly the parameters its published safetensors hold
# (8,292,166,656; 8,291,375,616; 8,767,123,696: tests/transformers/test_bench_hf.py checks it on
# the meta device). Placeholder ids are those of every Qwen-VL vocabulary (and transformers' defaults).
QWEN_TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)
QWEN_SPECIAL_FROM = 151643       # <|endoftext|>, the first special token: random prompt text stays below
_QWEN2_7B_TEXT = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                      rms_norm_eps=1e-6, hidden_act="silu", mrope_section=[16, 24, 24], rope_theta=1e6)
_QWEN3_8B_TEXT = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                      rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, mrope_section=[24, 20, 20],
                      mrope_interleaved=True, rope_theta=5e6)
_QWEN_VISION_COMMON = dict(in_channels=3, spatial_merge_size=2, temporal_patch_size=2)
_QWEN2_5_VL_7B_VISION = dict(_QWEN_VISION_COMMON, depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                             patch_size=14, out_hidden_size=3584, hidden_act="silu", window_size=112,
                             fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
_QWEN2_VL_7B_VISION = dict(_QWEN_VISION_COMMON, depth=32, embed_dim=1280, mlp_ratio=4, num_heads=16, patch_size=14,
                           hidden_size=3584, hidden_act="quick_gelu")
_QWEN3_VL_8B_VISION = dict(_QWEN_VISION_COMMON, depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                           patch_size=16, out_hidden_size=4096, hidden_act="gelu_pytorch_tanh",
                           num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])


def _narrow_qwen(kind: str, vision: dict, text: dict):
    """The same layout (depth, patches, windows, merge, M-RoPE split, vocabulary) 64 wide: op counts
    (bench --count-ops) and CPU tests at the real token counts, in milliseconds."""
    text = dict(text, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    text.update(mrope_section=[4, 2, 2] if kind == "qwen3_vl" else [2, 3, 3])       # head_dim 16: sum 8
    if "head_dim" in text:
        text["head_dim"] = 16
    if kind == "qwen2_vl":
        return dict(vision, embed_dim=64, num_heads=4, hidden_size=64), text
    return dict(vision, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64), text


QWEN_CHECKPOINTS = {
    "qwen2.5-vl-7b": ("qwen2_5_vl", _QWEN2_5_VL_7B_VISION, _QWEN2_7B_TEXT),
    "qwen2-vl-7b": ("qwen2_vl", _QWEN2_VL_7B_VISION, _QWEN2_7B_TEXT),
    "qwen3-vl-8b": ("qwen3_vl", _QWEN3_VL_8B_VISION, _QWEN3_8B_TEXT),
    "tiny-qwen2.5-vl": ("qwen2_5_vl", *_narrow_qwen("qwen2_5_vl", _QWEN2_5_VL_7B_VISION, _QWEN2_7B_TEXT)),
    "tiny-qwen2-vl": ("qwen2_vl", *_narrow_qwen("qwen2_vl", _QWEN2_VL_7B_VISION, _QWEN2_7B_TEXT)),
    "tiny-qwen3-vl": ("qwen3_vl", *_narrow_qwen("qwen3_vl", _QWEN3_VL_8B_VISION, _QWEN3_8B_TEXT)),
}
# The bench picture's side per model type: 448 px = 32 x 32 patches of 14 px, 512 px = 32 x 32 of 16 px;
# either way 1,024 patches, 16 x 16 = 256 merged tokens for the LLM (Qwen's processors keep these sizes:
# multiples of 28 / 32 px inside their pixel bounds).
QWEN_IMAGE_SIDE = {"qwen2_vl": 448, "qwen2_5_vl": 448, "qwen3_vl": 512}


def qwen_architecture(name: str, llm_layers=None, vision_layers=None):
    """(model_type, vision config fields, text config fields) of a name in ``QWEN_CHECKPOINTS``,
    optionally with fewer layers. A shallower tower keeps the full-attention blocks that still
    exist (Qwen2.5-VL; none left: the last block attends globally, as block 31 of 32 does) and
    spreads Qwen3-VL's deepstack blocks over it in proportion."""
    kind, vision, text = QWEN_CHECKPOINTS[name]
    vision, text = copy.deepcopy(vision), copy.deepcopy(text)
    for flag, value, fields, key in (("--llm-layers", llm_layers, text, "num_hidden_layers"),
                                     ("--vision-layers", vision_layers, vision, "depth")):
        if value is None:
            continue
        if not 1 <= value <= fields[key]:
            raise ValueError(f"{flag}={value} is not valid for {name}: expected 1..{fields[key]}")
        full, fields[key] = fields[key], value
        if key != "depth" or value == full:
            continue
        if "fullatt_block_indexes" in vision:
            vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < value] or [value - 1]
        if "deepstack_visual_indexes" in vision:
            vision["deepstack_visual_indexes"] = sorted({min(value - 1, round(i * value / full))
                                                         for i in vision["deepstack_visual_indexes"]})
    return kind, vision, text


def hf_name(upstream_name: str) -> str:
    """The transformers architecture built from the same shapes as an upstream one."""
    return next(hf for hf, upstream in HF_CHECKPOINTS.items() if upstream == upstream_name)


HF_IMAGE_TOKEN_ID = 32000
HF_VOCAB_SIZE = 32064

# The fields of an ARCHITECTURES entry that describe LLaVA, not its LLaMA decoder.
LLAVA_FIELDS = frozenset(_LLAVA_1_6)


def hf_architecture(name: str, llm_layers=None, vision_layers=None):
    """(LLaMA decoder fields, LLaVA fields, CLIP vision config fields) of a transformers
    conversion named in ``HF_CHECKPOINTS``, optionally with fewer layers."""
    if name not in HF_CHECKPOINTS and name not in VIDEO_CHECKPOINTS:
        hint = "; that is an upstream llava name (--backend upstream)" if name in ARCHITECTURES else ""
        raise ValueError(f"--random-weights {name!r} is not a known transformers architecture: "
                         f"expected one of {', '.join([*HF_CHECKPOINTS, *VIDEO_CHECKPOINTS, *QWEN_CHECKPOINTS])}"
                         f"{hint}")
    if name in VIDEO_CHECKPOINTS:
        _, upstream, image_size = VIDEO_CHECKPOINTS[name]
        llm, vision = architecture(upstream, llm_layers, vision_layers)
        vision["image_size"] = image_size
    else:
        llm, vision = architecture(HF_CHECKPOINTS[name], llm_layers, vision_layers)
    decoder = {key: value for key, value in llm.items() if key not in LLAVA_FIELDS}
    llava = {key: value for key, value in llm.items() if key in LLAVA_FIELDS}
    return dict(decoder, vocab_size=HF_VOCAB_SIZE), llava, vision


def architecture(name: str, llm_layers=None, vision_layers=None):
    """(LLaVA config fields, CLIP vision config fields) of a named checkpoint,
    optionally with fewer decoder / encoder layers."""
    if name not in ARCHITECTURES:
        hint = ("; that is a transformers name (--backend transformers)"
                if name in HF_CHECKPOINTS or name in QWEN_CHECKPOINTS else "")
        raise ValueError(f"--random-weights {name!r} is not a known architecture: "
                         f"expected one of {', '.join(ARCHITECTURES)}{hint}")
    llm, vision = copy.deepcopy(ARCHITECTURES[name]), dict(_TOWERS.get(name, CLIP_VIT_L_14_336))
    for flag, value, fields, full in (("--llm-layers", llm_layers, llm, llm["num_hidden_layers"]),
                                      ("--vision-layers", vision_layers, vision, vision["num_hidden_layers"])):
        if value is None:
            continue
        if not 1 <= value <= full:
            raise ValueError(f"{flag}={value} is not valid for {name}: expected 1..{full}")
        fields["num_hidden_layers"] = value
    select = llm["mm_vision_select_layer"]
    if vision["num_hidden_layers"] + select < 0:
        raise ValueError(
            f"--vision-layers={vision['num_hidden_layers']} is too shallow: mm_vision_select_layer={select} "
            f"needs at least {-select} encoder layers"
        )
    return llm, vision


@dataclass(frozen=True)
class VisionShape:
    """A Qwen-VL tower as the bench's FLOPs, meta and capture-memory read a CLIP config:
    patches of the bench picture, its blocks, and what sets Qwen's towers apart
    (no [CLS], 2-frame temporal patches, windows, 2 x 2 merge)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int                  # the bench picture's side
    spatial_merge_size: int
    num_channels: int = 3
    prefix_tokens: int = 0
    mlp_matrices: int = 2            # gate, up, down: 3 (Qwen2.5-VL); fc1, fc2: 2
    temporal_patch_size: int = 2
    window_patches: int = 0          # patches per attention window in windowed blocks (0: none)
    full_attention_layers: Optional[int] = None      # blocks attending over the whole picture (None: all)


def vision_shape(model) -> VisionShape:
    config = model.config.vision_config
    kind = model.config.model_type
    hidden = getattr(config, "embed_dim", None) if kind == "qwen2_vl" else config.hidden_size
    intermediate = hidden * config.mlp_ratio if kind == "qwen2_vl" else config.intermediate_size
    fields = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=config.depth,
                  num_attention_heads=config.num_heads, patch_size=config.patch_size,
                  image_size=QWEN_IMAGE_SIDE[kind], spatial_merge_size=config.spatial_merge_size,
                  num_channels=config.in_channels, temporal_patch_size=config.temporal_patch_size,
                  mlp_matrices=3 if kind == "qwen2_5_vl" else 2)
    if kind == "qwen2_5_vl":
        fields.update(window_patches=(config.window_size // config.patch_size) ** 2,
                      full_attention_layers=len(config.fullatt_block_indexes))
    return VisionShape(**fields)
