"""The prompt of one image question for a transformers LLaVA checkpoint.

The processor's chat template, one user turn holding the image then the question,
with the generation prompt: how the accuracy command asks its questions and how
``fitprune-fit`` builds its calibration inputs on such a checkpoint. Templates
that take a message's content as one string (``'USER: ' + message['content']``)
get the image placeholder and the question as that string.
"""

from __future__ import annotations


def image_question_inputs(processor, image, text: str):
    """``processor`` outputs (``input_ids``, ``pixel_values``, ...; batch of one) for
    ``image`` (PIL) and the question ``text``."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    try:
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    except TypeError:       # the template concatenates the content as a string
        conversation = [{"role": "user", "content": f"{processor.image_token}\n{text}"}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    return processor(images=image, text=prompt, return_tensors="pt")
