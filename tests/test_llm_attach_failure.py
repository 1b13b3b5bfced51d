"""A decoder the LLM runtime cannot drive is left exactly as it was."""

import pytest

from llava_freepruner.runtime.llm import FastVPolicy, attach, is_attached
from test_llm_tiny_models import tiny_llava


def test_a_failed_attach_leaves_no_wrapper_and_no_hook():
    model = tiny_llava(seed=0)
    decoder = model.get_model()
    # the last layer lacks what the runtime hooks: attaching fails after wrapping the others
    del decoder.layers[-1].self_attn.rotary_emb
    with pytest.raises(AttributeError, match="rotary_emb"):
        attach(model, FastVPolicy(0.5, 1))
    assert not is_attached(model)
    assert all("forward" not in module.__dict__ for module in [decoder, *decoder.layers])
    assert all(not layer.self_attn.rotary_emb._forward_pre_hooks for layer in decoder.layers[:-1])
