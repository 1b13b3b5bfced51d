"""The capture hooks see exactly the attention the tower computes, and change nothing."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava_freepruner.runtime.capture import AttentionCapture
from llava_freepruner.runtime.methods.base import CropRequest, SelectionContext, VisionMethod


class Recorder(VisionMethod):
    def __init__(self, layers):
        self.layers = layers
        self.seen = {}
        self.kinds = set()

    def attention_layers(self, num_layers, feature_layer):
        return self.layers

    def observe(self, layer, view, ctx):
        self.kinds.add(type(view).__name__)
        self.seen[layer] = {
            "maps": view.rows(),
            "received": view.received(),
            "paid": view.paid_to(torch.tensor([[1, 5]] * view.batch_size)),
            "some_rows": view.rows(torch.tensor([[3, 0]] * view.batch_size)),
        }


def tiny_clip(dtype=torch.float32):
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=4, image_size=56, patch_size=14)
    return CLIPVisionModel(config).eval().to(dtype)


@pytest.mark.parametrize("reuse_maps", [True, False])
def test_hooks_match_output_attentions_and_leave_outputs_unchanged(reuse_maps):
    model = tiny_clip()
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        reference = model(images, output_attentions=True, output_hidden_states=True)
        method = Recorder((0, 2))
        ctx = SelectionContext([CropRequest(4)] * 2, grid=(4, 4), num_prefix=1, num_layers=3, feature_layer=1)
        with AttentionCapture(model, method, ctx, reuse_maps=reuse_maps):
            hooked = model(images, output_hidden_states=True)
        after = model(images, output_hidden_states=True)
    assert sorted(method.seen) == [0, 2]
    for layer in (0, 2):
        maps = reference.attentions[layer].mean(dim=1)
        torch.testing.assert_close(method.seen[layer]["maps"], maps, rtol=1e-5, atol=1e-6)
        received = maps.sum(dim=1) - torch.diagonal(maps, dim1=1, dim2=2)
        torch.testing.assert_close(method.seen[layer]["received"], received, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.seen[layer]["paid"], maps[:, :, [1, 5]].sum(2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(method.seen[layer]["some_rows"], maps[:, [3, 0]], rtol=1e-5, atol=1e-6)
    for a, b in zip(hooked.hidden_states, reference.hidden_states):
        assert torch.equal(a, b)
    assert method.kinds == {"MapView" if reuse_maps else "QueryKeyView"}
    # Hooks are gone after the context.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(after.last_hidden_state, reference.last_hidden_state)


def test_fp16_tower_gives_fp32_statistics():
    model = tiny_clip(torch.float16)
    method = Recorder((1,))
    ctx = SelectionContext([CropRequest(4)], grid=(4, 4), num_prefix=1, num_layers=3, feature_layer=1)
    with torch.no_grad(), AttentionCapture(model, method, ctx):
        model(torch.randn(1, 3, 56, 56, dtype=torch.float16))
    maps = method.seen[1]["maps"]
    assert method.kinds == {"MapView"}      # the layer's fp16 map, reduced over heads in fp32
    assert maps.dtype == torch.float32
    # rows of fp16 probabilities sum to one up to fp16 rounding
    torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)), rtol=0, atol=1e-3)
