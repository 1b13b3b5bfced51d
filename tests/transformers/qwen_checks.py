"""What the Qwen-VL tests share: budgets, the decoder's inputs call by call, the kept positions."""

import math

import torch

from llava_freepruner.runtime.backends import transformers_qwen


def half(n):
    """round-half-up(0.5 x n): what ratio 0.5 keeps of n tokens."""
    return math.floor(0.5 * n + 0.5)


def merged_tokens(inputs):
    """Merged tokens of each image, from the processor's grid (2 x 2 merge)."""
    return [int(t * h * w) // 4 for t, h, w in inputs["image_grid_thw"].tolist()]


class DecoderCalls:
    """The inputs the language model receives, call by call (forward hook, returns nothing)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output):
        self.calls.append({"width": kwargs["inputs_embeds"].shape[1], "position_ids": kwargs.get("position_ids")})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class KeptSpy:
    """The kept positions of every image the backend selects for."""

    def __init__(self, monkeypatch):
        self.kept = []
        original = transformers_qwen._keep_in_place

        def spy(item, selections, feats):
            kept, feats = original(item, selections, feats)
            self.kept.append(kept.cpu())
            return kept, feats

        monkeypatch.setattr(transformers_qwen, "_keep_in_place", spy)


def full_positions(model, inputs):
    """The position ids the unpatched decoder gets for the whole prompt."""
    with DecoderCalls(model) as calls, torch.no_grad():
        model(**inputs)
    return calls.calls[0]["position_ids"]
