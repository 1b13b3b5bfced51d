"""The start-up line states the model's own visual-token counts, once."""

import logging

import torch

from llava_freepruner.fixtures import hf_tiny


def test_the_line_names_the_image_grid_of_the_model_and_nothing_else(tiny_models, photos, plugin):
    model, processor = tiny_models(hf_tiny.TinyHF(kind="video_llava"))      # 224 px: 256 patches per image
    inputs = hf_tiny.video_inputs(model, processor, [[photos["rocket"]] * 2], ["What happens?"],
                                  image=photos["coffee"])
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("llava_freepruner")
    logger.addHandler(handler)
    try:
        plugin(ratio=0.5)
        with torch.no_grad():
            model(**inputs)
    finally:
        logger.removeHandler(handler)
    images = [m for m in messages if m.endswith("per image.")]
    assert images == ["freePruner: freepruner keeping 128 of 256 visual tokens per image."]
    assert not any("of 576" in m for m in messages), messages
