"""Tiny random-weight checkpoints of transformers' LLaVA classes, built offline.

A byte-level BPE tokenizer trained on a few sentences, a CLIP tower of the real
geometry (336 px, 14 px patches: 576 patches per crop) with few narrow layers, and
a Llama, Mistral or Qwen2 decoder. The processor is transformers' own
(``LlavaProcessor`` / ``LlavaNextProcessor``), so ``processor(images=..., text=...)``
expands ``<image>`` exactly as for the published checkpoints. Answers mean nothing.

The video kinds and OneVision have processors whose video half needs torchvision:
``build`` returns an image processor and the tokenizer for them (``ImageAndText``),
``full_processor`` and ``save`` the real ``VideoLlavaProcessor``,
``LlavaNextVideoProcessor`` or ``LlavaOnevisionProcessor`` where torchvision imports.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass

import torch

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
# Content as a list of typed items ({"type": "image"|"video"|"text", ...}) or as a plain
# string that already holds its <image>/<video> placeholders (lmms-eval's llava_hf passes one)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'video' %}<video>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_CORPUS = [
    "USER: What is in the image? ASSISTANT: A cat sitting on a red chair near the window.",
    "Describe the picture in one sentence. The photo shows a rocket, a coffee cup and a person.",
    "How many objects are there? Answer the question using a single word or phrase.",
    "yes no left right up down blue green yellow orange purple circle square triangle 0 1 2 3 4 5 6 7 8 9",
]
# Grid pinpoints of llava-v1.6 (336 px crops)
GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# llava-onevision: 384 px crops, 1x1 .. 6x6 tiles
ONEVISION_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]


@dataclass(frozen=True)
class TinyHF:
    kind: str = "llava"             # "llava" (1.5), "llava_next" (1.6, anyres), "llava_onevision",
                                    # "video_llava" or "llava_next_video"
    llm: str = "llama"              # "llama", "mistral" or "qwen2"
    vision_layers: int = 4
    llm_layers: int = 3
    seed: int = 0
    attn: str = "sdpa"
    vision_width: int = 32          # 64 or more for bitsandbytes 4-bit on CPU (it packs rows in blocks of 64)


def train_bpe(special_tokens, corpus=_CORPUS, vocab_size: int = 400, pre_tokenizer=None):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus``; ``special_tokens``
    take the first ids. ``pre_tokenizer`` defaults to plain byte-level splitting."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in special_tokens else None))
    tokenizer.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def build_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_bpe(["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, VIDEO_TOKEN])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="left",
                                   model_input_names=["input_ids", "attention_mask"])
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    return fast


def _text_config(spec: TinyHF, vocab: int, tokenizer):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        spec.llm, vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=spec.llm_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def build(spec: TinyHF = TinyHF()):
    """(model in eval mode, processor) for ``spec``, random weights from ``spec.seed``."""
    from transformers import CLIPVisionConfig

    tokenizer = build_tokenizer()
    vision = CLIPVisionConfig(hidden_size=spec.vision_width, intermediate_size=2 * spec.vision_width,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=2, image_size=336,
                              patch_size=14, projection_dim=32)
    text = _text_config(spec, len(tokenizer), tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    torch.manual_seed(spec.seed)
    if spec.kind == "llava":
        from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

        config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                             vision_feature_layer=-2, vision_feature_select_strategy="default")
        model_cls = LlavaForConditionalGeneration
        image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                   num_additional_image_tokens=1)
    elif spec.kind == "llava_next":
        from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                                  LlavaNextProcessor)

        config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                                 vision_feature_layer=-2, vision_feature_select_strategy="default",
                                 image_grid_pinpoints=GRID_PINPOINTS)
        model_cls = LlavaNextForConditionalGeneration
        image_processor = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                  image_grid_pinpoints=GRID_PINPOINTS)
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                       vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                       num_additional_image_tokens=1)
    elif spec.kind == "llava_onevision":
        from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                                  LlavaOnevisionImageProcessor, SiglipVisionConfig)

        # SigLIP at 384 px: 27 x 27 = 729 patches, no [CLS]; features from the last layer, all kept
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=spec.vision_layers,
                                    num_attention_heads=2, image_size=384, patch_size=14)
        config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                                      video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
                                      vision_feature_layer=-1, vision_feature_select_strategy="full",
                                      image_grid_pinpoints=ONEVISION_PINPOINTS, vision_aspect_ratio="anyres_max_9")
        model_cls = LlavaOnevisionForConditionalGeneration
        # LlavaOnevisionProcessor needs torchvision for its video half: the image
        # processor and the tokenizer are returned instead (see onevision_inputs).
        processor = ImageAndText(LlavaOnevisionImageProcessor(size={"height": 384, "width": 384},
                                                              image_grid_pinpoints=ONEVISION_PINPOINTS), tokenizer)
    elif spec.kind in VIDEO_KINDS:
        config, model_cls, processor = _video_model(spec, vision, text, tokenizer)
    else:
        raise ValueError(f"TinyHF.kind={spec.kind!r}: expected 'llava', 'llava_next', 'llava_onevision', "
                         "'video_llava' or 'llava_next_video'")
    config._attn_implementation = spec.attn
    model = model_cls(config).eval()
    _spread_weights(model)
    return model, processor


@dataclass(frozen=True)
class ImageAndText:
    image_processor: object
    tokenizer: object
    frame_processor: object = None      # video frames, one image each (see video_inputs)


VIDEO_KINDS = ("video_llava", "llava_next_video")


def _video_model(spec: TinyHF, vision, text, tokenizer):
    """(config, class, processors) of a tiny Video-LLaVA (224 px frames, [CLS] kept) or
    LLaVA-NeXT-Video (336 px, 2 x 2 average pooling). transformers 5.x video processors
    need torchvision: frames go through an image processor instead (see video_inputs)."""
    from transformers import CLIPImageProcessor

    ids = dict(image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
               video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
               vision_feature_layer=-2, vision_feature_select_strategy="default")
    if spec.kind == "video_llava":
        from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor

        vision.image_size = 224
        frames = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        images = VideoLlavaImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        return (VideoLlavaConfig(vision_config=vision, text_config=text, **ids), VideoLlavaForConditionalGeneration,
                ImageAndText(images, tokenizer, frames))
    from transformers import LlavaNextImageProcessor, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    frames = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    images = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                     image_grid_pinpoints=GRID_PINPOINTS)
    config = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_grid_pinpoints=GRID_PINPOINTS,
                                  spatial_pool_mode="average", spatial_pool_stride=2, **ids)
    return config, LlavaNextVideoForConditionalGeneration, ImageAndText(images, tokenizer, frames)


def full_processor(spec: TinyHF, processor: ImageAndText):
    """transformers' own processor for a video kind or OneVision, with the tokenizer and
    image processor of ``processor`` (from ``build(spec)``) and the video processor the
    published checkpoints use at this model's frame size, so that
    ``processor(text=..., videos=...)`` writes the placeholders the model expects.
    Needs torchvision (transformers' video processors are torchvision-only)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(f"the transformers processor of a tiny {spec.kind!r} checkpoint has a video processor, "
                          "which needs torchvision (bash eval_scripts/install.sh --video VENV makes an environment "
                          "with it)")
    common = dict(tokenizer=processor.tokenizer, chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
                  video_token=VIDEO_TOKEN)
    if spec.kind == "video_llava":
        from transformers import VideoLlavaProcessor, VideoLlavaVideoProcessor

        frames = VideoLlavaVideoProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        return VideoLlavaProcessor(image_processor=processor.image_processor, video_processor=frames, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1, **common)
    if spec.kind == "llava_next_video":
        from transformers import LlavaNextVideoProcessor, LlavaNextVideoVideoProcessor

        frames = LlavaNextVideoVideoProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        return LlavaNextVideoProcessor(video_processor=frames, image_processor=processor.image_processor, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       **common)
    if spec.kind == "llava_onevision":
        from transformers import LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

        # as llava-hf/llava-onevision-qwen2-*-ov-hf: 384 x 384 frames, SigLIP's normalisation
        frames = LlavaOnevisionVideoProcessor(size={"height": 384, "width": 384}, image_mean=[0.5, 0.5, 0.5],
                                              image_std=[0.5, 0.5, 0.5])
        return LlavaOnevisionProcessor(image_processor=processor.image_processor, video_processor=frames,
                                       num_image_tokens=27 * 27, vision_feature_select_strategy="full",
                                       vision_aspect_ratio="anyres_max_9", **common)
    raise ValueError(f"TinyHF.kind={spec.kind!r} has a single processor already (build returns it)")


def onevision_frame_processor():
    """OneVision's video frames: 384 x 384 without cropping, SigLIP's normalisation."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"height": 384, "width": 384}, do_center_crop=False,
                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def video_tokens(model, frames: int) -> int:
    """Placeholders the processor writes for a video of ``frames`` frames."""
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    kind = model.config.model_type
    if kind == "video_llava":
        return frames * (side * side + 1)
    if kind == "llava_next_video":
        return frames * (side // model.config.spatial_pool_stride) ** 2
    return frames * math.ceil(side / 2) ** 2 + 1            # OneVision: one newline per video


def video_inputs(model, processor: ImageAndText, clips, questions, image=None):
    """Processor-like inputs for videos: ``clips`` is a list of videos (each a list of
    frames, PIL images), one per prompt; ``image`` (optional, Video-LLaVA) goes
    before the first prompt's video."""
    frames = processor.frame_processor or onevision_frame_processor()
    pixels = torch.stack([frames(images=clip, return_tensors="pt")["pixel_values"] for clip in clips])
    texts = [f"USER: {VIDEO_TOKEN * video_tokens(model, len(clip))}\n{q} ASSISTANT:" for clip, q in zip(clips, questions)]
    extra = {}
    if image is not None:
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        texts[0] = IMAGE_TOKEN * side * side + texts[0]
        # Video-LLaVA's forward names its images pixel_values_images before transformers 5
        key = "pixel_values" if "pixel_values" in inspect.signature(model.forward).parameters else "pixel_values_images"
        extra[key] = frames(images=[image], return_tensors="pt")["pixel_values"]
    inputs = processor.tokenizer(texts, return_tensors="pt", padding=True)
    return {**inputs, "pixel_values_videos": pixels, **extra}


def onevision_inputs(model, processor: ImageAndText, images, questions):
    """Processor-like inputs for the tiny OneVision model: each prompt holds one
    ``<image>`` expanded to the number of tokens the unpatched model makes for it."""
    pixels = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        made = model.model.get_image_features(pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"],
                                              vision_feature_layer=-1, vision_feature_select_strategy="full",
                                              vision_aspect_ratio="anyres_max_9")
    counts = [f.shape[0] for f in getattr(made, "pooler_output", made)]
    texts = [f"USER: {IMAGE_TOKEN * n}\n{q} ASSISTANT:" for n, q in zip(counts, questions)]
    inputs = processor.tokenizer(texts, return_tensors="pt", padding=True)
    return {**inputs, "pixel_values": pixels["pixel_values"], "image_sizes": pixels["image_sizes"]}


def _spread_weights(model) -> None:
    # Random init at std 0.02 leaves a tiny model's attention almost uniform and
    # its logits nearly tied; wider weights give every test distinct rankings.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.2)


def save(spec: TinyHF, folder: str) -> str:
    """Write model and processor to ``folder`` (a checkpoint ``from_pretrained`` and
    ``AutoProcessor.from_pretrained`` load). The video kinds and OneVision get their
    full transformers processor (``full_processor``: needs torchvision)."""
    model, processor = build(spec)
    if isinstance(processor, ImageAndText):
        processor = full_processor(spec, processor)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
