"""What the Qwen-VL tests share: budgets, the decoder's inputs call by call, the kept positions."""

import math

import torch

from chat_generation import generate
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

        def spy(media, selections, features):
            kept, features = original(media, selections, features)
            self.kept += [positions.cpu() for positions in kept]
            return kept, features

        monkeypatch.setattr(transformers_qwen, "_keep_in_place", spy)


def full_positions(model, inputs):
    """The position ids the unpatched decoder gets for the whole prompt."""
    with DecoderCalls(model) as calls, torch.no_grad():
        model(**inputs)
    return calls.calls[0]["position_ids"]


def kept_columns(model, inputs, kept_per_image):
    """Per prompt (one image each), the columns its pruned prompt keeps: the text and the
    image's kept tokens."""
    keep = inputs["attention_mask"].bool().clone()
    image = inputs["input_ids"] == model.config.image_token_id
    for row, kept in enumerate(kept_per_image):
        columns = image[row].nonzero().flatten()
        dropped = torch.ones(columns.numel(), dtype=torch.bool)
        dropped[kept] = False
        keep[row, columns[dropped]] = False
    return keep


def pruned_generate(model, inputs, plugin, monkeypatch, method, max_new_tokens):
    """generate() with ``method`` at ratio 0.5, one image per prompt: (output, the decoder's
    calls, :func:`kept_columns`), after checking that each image kept half its tokens and
    the prefill ran on the prompt without the dropped ones."""
    spy = KeptSpy(monkeypatch)
    plugin(ratio=0.5, vision_method=method)
    with DecoderCalls(model) as calls:
        out = generate(model, inputs, max_new_tokens=max_new_tokens)
    counts = merged_tokens(inputs)
    assert [k.numel() for k in spy.kept] == [half(n) for n in counts]
    assert calls.calls[0]["width"] == inputs["input_ids"].shape[1] - min(n - half(n) for n in counts)
    return out, calls.calls, kept_columns(model, inputs, spy.kept)
