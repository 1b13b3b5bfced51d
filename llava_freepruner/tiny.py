"""Tiny LLaVA checkpoints with random weights, built offline in seconds.

They have the real structure (a CLIP ViT at 336 px with 14 px patches, so 576
patches per image; an MLP projector; a LLaMA or Mistral decoder) and load with
upstream ``load_pretrained_model`` like any LLaVA checkpoint. The weights are
random: answers are meaningless, but every code path and token count is real.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional

import torch

# A small corpus so the tokenizer knows common words; any text would do.
_CORPUS = """
What is in the image? Describe the picture in detail. How many people are there?
What color is the car? Is there a cat on the sofa? Answer the question using a single
word or phrase. The astronaut wears a white suit. A coffee cup stands on a table.
The rocket is on the launch pad. A cat sleeps in the sun. Yes. No. One. Two. Three.
A man is riding a horse on the beach. Where is the dog? What is the woman holding?
The sky is blue and the grass is green. There is a red bus on the street.
"""


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny checkpoint. ``anyres`` builds a LLaVA-NeXT (v1.6) style one."""

    llm: str = "llama"                 # llama or mistral
    vision_layers: int = 4
    vision_hidden: int = 64
    vision_heads: int = 4
    llm_layers: int = 2
    llm_hidden: int = 64
    llm_heads: int = 4
    select_feature: str = "patch"      # patch or cls_patch
    anyres: bool = False
    merge_type: str = "spatial_unpad"  # LLaVA-NeXT only: spatial_unpad, spatial or flat
    clip_text: bool = False            # the tower's checkpoint is a whole CLIP (text tower + tokenizer too)
    seed: int = 0
    extra: dict = field(default_factory=dict)   # more config fields, verbatim

    @property
    def dirname(self) -> str:
        # load_pretrained_model dispatches on the name: it must contain "llava".
        kind = "v1.6" if self.anyres else "v1.5"
        return f"tiny-llava-{kind}-{self.llm}-{self.select_feature}" + ("-cliptext" if self.clip_text else "")


def train_tokenizer(out_dir: str) -> None:
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    corpus = os.path.join(out_dir, "corpus.txt")
    with open(corpus, "w") as handle:
        handle.write(_CORPUS * 4)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(out_dir, "tokenizer"), vocab_size=300,
        model_type="bpe", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    os.remove(corpus)
    tokenizer = LlamaTokenizer(os.path.join(out_dir, "tokenizer.model"), legacy=False)
    tokenizer.save_pretrained(out_dir)
    os.remove(os.path.join(out_dir, "tokenizer.vocab"))


def _build_vision(spec: TinySpec, out_dir: str) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
        image_size=336, patch_size=14, projection_dim=spec.vision_hidden,
    )
    torch.manual_seed(spec.seed)
    if spec.clip_text:
        build_clip(out_dir, config)
    else:
        CLIPVisionModel(config).save_pretrained(out_dir)
    CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    ).save_pretrained(out_dir)


def _clip_tokenizer(out_dir: str) -> None:
    """A byte-level CLIP tokenizer without merges: every character is a token."""
    from transformers import CLIPTokenizerFast

    try:
        from transformers.models.clip.tokenization_clip import bytes_to_unicode
    except ImportError:         # transformers 5.x keeps it in one place
        from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars]
                                                + ["<|startoftext|>", "<|endoftext|>"])}
    with open(os.path.join(out_dir, "vocab.json"), "w") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(out_dir, "merges.txt"), "w") as handle:
        handle.write("#version: 0.2\n")
    CLIPTokenizerFast.from_pretrained(out_dir).save_pretrained(out_dir)


def build_clip(out_dir: str, vision_config) -> None:
    """A whole tiny CLIP checkpoint (text and vision towers with projections,
    tokenizer) whose vision half has ``vision_config``."""
    from transformers import CLIPConfig, CLIPModel

    os.makedirs(out_dir, exist_ok=True)
    _clip_tokenizer(out_dir)
    text = dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                projection_dim=vision_config.projection_dim)
    config = CLIPConfig(text_config=text, vision_config=vision_config.to_dict(),
                        projection_dim=vision_config.projection_dim)
    CLIPModel(config).save_pretrained(out_dir)


def _llava_fields(spec: TinySpec, vision_dir: str) -> dict:
    fields = dict(
        mm_vision_tower=vision_dir, mm_hidden_size=spec.vision_hidden, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature=spec.select_feature,
        mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
        tokenizer_model_max_length=2048, tokenizer_padding_side="right", mm_patch_merge_type="flat",
    )
    if spec.anyres:
        fields.update(
            image_aspect_ratio="anyres", mm_patch_merge_type=spec.merge_type,
            image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
            unfreeze_mm_vision_tower=True, tokenizer_model_max_length=4096,
        )
    fields.update(spec.extra)
    return fields


def _build_model(spec: TinySpec, out_dir: str, vocab_size: int) -> None:
    if spec.llm == "llama":
        from llava.model.language_model.llava_llama import LlavaConfig as Config
        from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM as Model
    elif spec.llm == "mistral":
        from llava.model.language_model.llava_mistral import LlavaMistralConfig as Config
        from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM as Model
    else:
        raise ValueError(f"TinySpec.llm={spec.llm!r}: expected 'llama' or 'mistral'")

    config = Config(
        vocab_size=vocab_size, hidden_size=spec.llm_hidden, intermediate_size=2 * spec.llm_hidden,
        num_hidden_layers=spec.llm_layers, num_attention_heads=spec.llm_heads,
        num_key_value_heads=spec.llm_heads, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="float16",
        **_llava_fields(spec, os.path.join(out_dir, "vision")),
    )
    torch.manual_seed(spec.seed + 1)
    model = Model(config)
    generator = torch.Generator().manual_seed(spec.seed + 2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "vision_tower" in name:      # keeps CLIP's own initialisation
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        if hasattr(model.get_model(), "image_newline"):
            model.get_model().image_newline.copy_(torch.randn(spec.llm_hidden, generator=generator))
    # LLaVA-1.5 loads its tower from mm_vision_tower later (no tower weights here);
    # LLaVA-NeXT builds it at init and takes its weights from the checkpoint.
    model.save_pretrained(out_dir, safe_serialization=True)


def build(root: str, spec: Optional[TinySpec] = None) -> str:
    """Build (or reuse) a tiny checkpoint under ``root``; returns its directory.

    The directory is written under a temporary name and renamed when complete,
    so an interrupted build never leaves a half checkpoint behind.
    """
    spec = spec or TinySpec()
    digest = hashlib.sha1(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()[:8]
    target = os.path.join(root, f"{spec.dirname}-{digest}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".building-", dir=root)
    try:
        train_tokenizer(staging)
        _build_vision(spec, os.path.join(staging, "vision"))
        from transformers import LlamaTokenizer

        vocab = len(LlamaTokenizer.from_pretrained(staging))
        # The vision tower path is absolute, so point it at the final location.
        _build_model(spec, staging, vocab)
        _retarget_vision(staging, os.path.join(target, "vision"))
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _retarget_vision(checkpoint: str, vision_dir: str) -> None:
    path = os.path.join(checkpoint, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config["mm_vision_tower"] = vision_dir
    with open(path, "w") as handle:
        json.dump(config, handle, indent=2)


# The demo's checkpoint: still small enough to build and run in seconds on a
# laptop CPU, large enough that the LLM's prefill dominates and its time is
# visible next to the vision tower's.
DEMO = TinySpec(vision_layers=6, vision_hidden=128, llm_layers=4, llm_hidden=256, llm_heads=8)
