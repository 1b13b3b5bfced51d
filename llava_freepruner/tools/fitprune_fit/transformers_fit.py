"""FitPrune fitting on a transformers checkpoint: ``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, and the Qwen-VL classes
(``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
``Qwen3VLForConditionalGeneration``, ``Qwen3VLMoeForConditionalGeneration``).

A question's prompt is the processor's chat template with one user turn holding the
image then the question (:func:`llava_freepruner.tools.prompts.image_question_inputs`, as
the accuracy command asks). The model's own forward builds the decoder input (tower,
projector, LLaVA-NeXT packing, placeholders filled); it is taken at the entry of the
language model, which does not run, with what else the language model is called with
(Qwen-VL: the prompt's M-RoPE position ids; Qwen3-VL: its deepstack rows and their
positions). The visual span is the run of image placeholders. A Qwen-VL image is
resized to its own number of merged tokens: the recipe is fitted for the median count
and scaled to each prompt's (as for LLaVA-NeXT).
"""

import os

import torch

from ..prompts import image_question_inputs
from ..vision.images import open_image
from .fit import QWEN_MODEL_TYPES, fit_encoded


class _Captured(Exception):
    """Raised by the hook on the language model once its input is taken."""


def load(model_path, device):
    """(model in eval mode, processor) of a transformers LLaVA checkpoint: float32 on CPU,
    the checkpoint's dtype elsewhere."""
    from transformers import AutoModelForImageTextToText

    processor = _processor(model_path)
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"model {model_path}: its processor has no chat template; fitprune-fit builds the prompt "
                         "with it (one user turn: the image, then the question)")
    dtype = torch.float32 if torch.device(device).type == "cpu" else "auto"
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
    return model.to(device).eval(), processor


# what the language model is called with besides the embeddings, kept for the fit's decoder runs; the
# mask too: without one, transformers 4.57 reads M-RoPE ids that repeat (an image's) as packed sequences
_DECODER_KWARGS = ("attention_mask", "position_ids", "visual_pos_masks", "deepstack_visual_embeds")


def _processor(model_path):
    """The checkpoint's processor. A Qwen-VL processor holds a video processor, which needs
    torchvision; without torchvision its image-only form is loaded (images are all a fit reads)."""
    from transformers import AutoConfig, AutoProcessor

    from ...fixtures.hf_tiny_qwen import has_torchvision, load_processor

    if not has_torchvision() and AutoConfig.from_pretrained(model_path).model_type in QWEN_MODEL_TYPES:
        return load_processor(model_path)
    return AutoProcessor.from_pretrained(model_path)


def model_name(model, model_path):
    """The checkpoint folder's name, or the hub name it was loaded from."""
    if os.path.isdir(model_path):
        return os.path.basename(os.path.normpath(os.path.abspath(model_path)))
    return getattr(model.config, "_name_or_path", None) or model_path


def _image_token_id(config):
    token = getattr(config, "image_token_id", None)
    return getattr(config, "image_token_index", None) if token is None else token


def encode_sample(model, processor, record, image_folder):
    """Spliced decoder input (1, L, d), the visual span of one question and the other
    arguments the language model gets (its ``attention_mask``; Qwen-VL: ``position_ids``;
    Qwen3-VL: the deepstack rows)."""
    inputs = image_question_inputs(processor, open_image(os.path.join(image_folder, record["image"])), record["text"])
    ids = inputs["input_ids"][0]
    positions = torch.nonzero(ids == _image_token_id(model.config)).flatten().tolist()
    if not positions or positions[-1] + 1 - positions[0] != len(positions):
        runs = "no image placeholder" if not positions else "image placeholders in several runs"
        raise ValueError(f"question {record['question_id']!r}: the prompt holds {runs}; fitting needs one image")
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    captured = {}

    def take(module, args, kwargs):
        captured["embeds"] = kwargs.get("inputs_embeds")
        captured["extra"] = {key: kwargs[key] for key in _DECODER_KWARGS if kwargs.get(key) is not None}
        raise _Captured

    handle = model.model.language_model.register_forward_pre_hook(take, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(**inputs, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    embeds = captured.get("embeds")
    if embeds is None or embeds.shape[:2] != (1, ids.shape[0]):
        raise RuntimeError(f"question {record['question_id']!r}: the language model was not handed the "
                           f"{ids.shape[0]} spliced embeddings of the prompt")
    return embeds, (positions[0], positions[-1] + 1), captured["extra"]


def fit_loaded(model, processor, name, questions, question_file, image_folder, targets, progress=True,
               tolerance=0.01, started=None, metadata=None):
    """:func:`~llava_freepruner.tools.fitprune_fit.checkpoint.fit_recipes` on a transformers LLaVA model already
    in memory (``questions`` from :func:`~llava_freepruner.tools.fitprune_fit.fit.read_questions`)."""
    def encode(record):
        return encode_sample(model, processor, record, image_folder)

    return fit_encoded(model.model.language_model, encode, name, questions, question_file, targets,
                       progress, tolerance, started, metadata, {"prompt": "chat_template"})


def fit_checkpoint(model_path, questions, question_file, image_folder, targets, device, progress=True,
                   tolerance=0.01, started=None):
    model, processor = load(model_path, device)
    metadata = {"model_path": model_path, "model_type": model.config.model_type}
    return fit_loaded(model, processor, model_name(model, model_path), questions, question_file, image_folder,
                      targets, progress, tolerance, started, metadata)
