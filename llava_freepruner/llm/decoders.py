"""The decoders the pruning runtime supports, and how each transformers version calls them.

Llama, Mistral and Qwen2 decoder layers share one structure: input norm, q/k/v
projections with rotary embeddings, attention, output projection, post-attention
norm, MLP. What changed across transformers versions is the calling convention:

- 4.37 (upstream llava's pin): every attention module owns its rotary embedding,
  called with ``seq_len``; layers return tuples; the cache kwarg is ``past_key_value``.
- from 4.54: the model computes ``position_embeddings`` (cos, sin) once and passes
  them to every layer; layers return the hidden states; the cache kwarg is
  ``past_key_values`` (``cache`` from 5.24). The 4-D mask may be None under SDPA.

Versions in between mix the two and are refused.
"""

import importlib

import torch
import transformers

# Names a decoder and its layers receive the KV cache under, newest first.
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
FAMILIES = {"llama": "LlamaAttention", "mistral": "MistralAttention", "qwen2": "Qwen2Attention"}
# Where the decoder sits: a bare decoder, a *ForCausalLM or upstream llava (``model``),
# transformers' LLaVA classes (``model.language_model``).
_DECODER_PATHS = ("", "model", "model.language_model")


def _version():
    return tuple(int(part) for part in transformers.__version__.split(".")[:2])


def _supported_attention_classes():
    return tuple(getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), name)
                 for family, name in FAMILIES.items())


def _attribute_path(model, path):
    for name in filter(None, path.split(".")):
        model = getattr(model, name, None)
        if model is None:
            return None
    return model


def find_decoder(model):
    """The module that runs the decoder layers of ``model``; raises TypeError when
    there is none or it is not one the runtime supports."""
    for path in _DECODER_PATHS:
        decoder = _attribute_path(model, path)
        if isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) and len(decoder.layers):
            check_supported(decoder)
            return decoder
    raise TypeError(f"{type(model).__name__}: no decoder layers found (looked at "
                    f"{', '.join(repr(p or 'the model') for p in _DECODER_PATHS)}); decoder-side pruning "
                    f"supports Llama, Mistral and Qwen2 decoders")


def check_supported(decoder):
    """Raise TypeError naming what the runtime cannot run on this decoder."""
    if not (_version() == (4, 37) or _version() >= (4, 54)):
        raise TypeError(f"decoder-side pruning runs on transformers 4.37 (upstream llava) or >= 4.54; "
                        f"found {transformers.__version__}")
    supported = _supported_attention_classes()
    for layer in decoder.layers:
        attn = getattr(layer, "self_attn", None)
        if not isinstance(attn, supported):
            raise TypeError(f"decoder-side pruning supports {', '.join(FAMILIES.values())} decoders; "
                            f"{type(decoder).__name__} has {type(attn).__name__} layers")
    implementation = getattr(decoder.config, "_attn_implementation", None) or "eager"
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise TypeError(f"decoder-side pruning supports attn_implementation "
                        f"{' or '.join(map(repr, ATTENTION_IMPLEMENTATIONS))}, not {implementation!r}; "
                        f"load the model with attn_implementation='sdpa'")


def sliding_window(config):
    """The attention window some layer of this decoder applies, or None."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def cache_argument(arguments):
    """The KV cache among a forward's arguments (a dict), or None."""
    for name in CACHE_KWARGS:
        if arguments.get(name) is not None:
            return arguments[name]
    return None


def check_cache(cache):
    """Per-layer cache lengths differ after deletions: only a DynamicCache (or none) holds that."""
    from transformers.cache_utils import DynamicCache

    if cache is not None and not isinstance(cache, (DynamicCache, tuple, list)):
        raise TypeError(f"decoder-side pruning needs a DynamicCache (its layers hold different lengths after "
                        f"deletions) or no cache; got {type(cache).__name__}")


def cache_length(cache):
    """Tokens layer 0 holds (what generate reads): a Cache or a legacy tuple."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return cache.get_seq_length(0)
    return cache[0][0].shape[2] if len(cache) else 0


def hidden_states_of(outputs):
    return outputs[0] if isinstance(outputs, tuple) else outputs


def with_hidden_states(outputs, hidden):
    return (hidden,) + tuple(outputs[1:]) if isinstance(outputs, tuple) else hidden


class _PerAttentionRotary:
    """transformers 4.37."""

    def rotary_modules(self, decoder):
        return [layer.self_attn.rotary_emb for layer in decoder.layers]

    def cos_sin(self, attn, kwargs, value, rope_len):
        # the cache holds (seq_len, dim) tables; index them with the (gathered) positions
        cos, sin = attn.rotary_emb(value, seq_len=rope_len)
        positions = kwargs["position_ids"]
        return cos[positions], sin[positions]

    def gather_positions(self, kwargs, index):
        return {}

    def layer_output(self, hidden, cache, kwargs):
        outputs = (hidden,)
        if kwargs.get("output_attentions"):
            outputs += (None,)
        if kwargs.get("use_cache"):
            outputs += (cache,)
        return outputs


class _SharedRotary:
    """transformers >= 4.54."""

    def rotary_modules(self, decoder):
        return []

    def cos_sin(self, attn, kwargs, value, rope_len):
        return kwargs["position_embeddings"]

    def gather_positions(self, kwargs, index):
        """``position_embeddings`` (each (1 or B, L, dim)) for the sequence ``index`` (B, S) selects."""
        batch = index.shape[0]
        return {"position_embeddings": tuple(
            table.expand(batch, -1, -1).gather(1, index[:, :, None].expand(-1, -1, table.shape[-1]))
            for table in kwargs["position_embeddings"])}

    def layer_output(self, hidden, cache, kwargs):
        return hidden


def calling_convention():
    return _PerAttentionRotary() if _version() < (4, 54) else _SharedRotary()
