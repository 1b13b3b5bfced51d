"""The prompts of image questions for a transformers LLaVA checkpoint.

The processor's chat template, one user turn holding the image then the question,
with the generation prompt: how the accuracy command asks its questions and how
``fitprune-fit`` builds its calibration inputs on such a checkpoint. Templates
that take a message's content as one string (``'USER: ' + message['content']``)
get the image placeholder and the question as that string. Several questions
make one batch, left-padded so that every prompt ends where generation starts.
"""

from __future__ import annotations

from typing import Sequence


def _prompt(processor, text: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    try:
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    except TypeError:       # the template concatenates the content as a string
        conversation = [{"role": "user", "content": f"{processor.image_token}\n{text}"}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)


def image_questions_inputs(processor, images: Sequence, texts: Sequence[str]):
    """``processor`` outputs (``input_ids``, ``attention_mask``, ``pixel_values``, ...)
    for one question per image (PIL), left-padded to the longest prompt. A
    tokenizer without a padding token pads with its end-of-sequence token (the
    attention mask leaves the padding out either way)."""
    tokenizer = processor.tokenizer
    if len(texts) > 1 and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor(images=list(images), text=[_prompt(processor, text) for text in texts],
                     padding=len(texts) > 1, padding_side="left", return_tensors="pt")


def image_question_inputs(processor, image, text: str):
    """:func:`image_questions_inputs` for one image and its question (batch of one)."""
    return image_questions_inputs(processor, [image], [text])
