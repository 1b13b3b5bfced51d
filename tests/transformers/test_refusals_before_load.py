"""What the configuration and the model's class decide is refused when the model is built,
before any weight loads: not at the first image."""

import pytest

from llava_freepruner.fixtures import hf_tiny
from llava_freepruner.config import ConfigError


@pytest.mark.parametrize("fields, message", [
    ({"vision_method": "cdpruner", "ratio": 0.5}, "FREEPRUNER_METHOD=cdpruner needs the CLIP text tower.*set "
                                                  "FREEPRUNER_CLIP_TEXT"),
    ({"ratio": 0.5, "video": "temporal"}, "FREEPRUNER_VIDEO set, but LlavaModel is an image-only model"),
    ({"vision_method": None, "llm_method": "fitprune", "fitprune_recipe": "llava-v1.5-7b@60"},
     "FitPrune recipe llava-v1.5-7b@60 has 32 layers, the model's language model has 3"),
    ({"vision_method": None, "llm_method": "fastv", "ratio": 0.5, "fastv_layer": 3},
     "FastV layer=3 does not exist: the language model has 3 layers"),
])
def test_a_model_the_plugin_cannot_serve_is_refused_when_it_is_built(plugin, fields, message):
    plugin(**fields)
    with pytest.raises(ConfigError, match=message):
        hf_tiny.build(hf_tiny.TinyHF())


def test_video_variables_are_accepted_by_a_video_model(plugin):
    plugin(ratio=0.5, video="temporal")
    model, _ = hf_tiny.build(hf_tiny.TinyHF(kind="video_llava"))
    assert hasattr(model.model, "get_video_features")


def test_from_pretrained_refuses_while_building_before_loading_weights(plugin, tmp_path):
    import transformers

    folder = hf_tiny.save(hf_tiny.TinyHF(), str(tmp_path / "tiny"))
    plugin(ratio=0.5, video="frame")
    with pytest.raises(ConfigError, match="image-only model"):
        transformers.LlavaForConditionalGeneration.from_pretrained(folder)
