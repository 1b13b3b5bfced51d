"""The decoders the pruning runtime supports, and how each transformers version calls them.

Llama, Mistral and Qwen2 decoder layers share one structure: input norm, q/k/v
projections with rotary embeddings, attention, output projection, post-attention
norm, MLP. The language models of Qwen2-VL and Qwen2.5-VL are Qwen2 layers under
multimodal rotary embeddings (M-RoPE: (t, h, w) position ids, one rotary table per
row, mixed by channel sections); Qwen3-VL's add RMS norms on each head's queries and
keys and interleave the sections (Qwen3-VL-MoE: the same attention, mixture-of-experts
MLPs, which return their router logits beside the output on 4.57). What changed across transformers versions is the
calling convention:

- 4.37 (upstream llava's pin): every attention module owns its rotary embedding,
  called with ``seq_len``; layers return tuples; the cache kwarg is ``past_key_value``.
- from 4.54: the model computes ``position_embeddings`` (cos, sin) once and passes
  them to every layer; layers return the hidden states; the cache kwarg is
  ``past_key_values`` (``cache`` from 5.24). The 4-D mask may be None under SDPA.
  M-RoPE decoders come in two forms: tables already mixed to (batch, length,
  head_dim) (5.x, and Qwen3-VL on 4.57), or Qwen2-VL and Qwen2.5-VL on 4.x, whose
  rotary module returns one table per row, (3, batch, length, head_dim), that each
  attention mixes with ``mrope_section`` (``apply_multimodal_rotary_pos_emb``), and
  whose layers still return tuples.

Versions in between mix the two and are refused. The M-RoPE decoders are served from
4.54 on (transformers 4.37 has none of them).
"""

import sys

import torch
import transformers

# Names a decoder and its layers receive the KV cache under, newest first.
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# family (transformers.models.<family>) -> its attention class
FAMILIES = {"llama": "LlamaAttention", "mistral": "MistralAttention", "qwen2": "Qwen2Attention"}
# Qwen-VL language models (multimodal rotary embeddings), transformers >= 4.54
MROPE_FAMILIES = {"qwen2_vl": "Qwen2VLAttention", "qwen2_5_vl": "Qwen2_5_VLAttention",
                  "qwen3_vl": "Qwen3VLTextAttention", "qwen3_vl_moe": "Qwen3VLMoeTextAttention"}
# Where the decoder sits: a bare decoder, a *ForCausalLM or upstream llava (``model``),
# transformers' LLaVA classes (``model.language_model``).
_DECODER_PATHS = ("", "model", "model.language_model")


def _version():
    return tuple(int(part) for part in transformers.__version__.split(".")[:2])


def _families():
    """family -> attention class name, of the families this transformers serves."""
    return {**FAMILIES, **(MROPE_FAMILIES if _version() >= (4, 54) else {})}


def family_of(attn):
    """The family whose attention class ``attn`` is (or derives from), or None. Told by
    the class's module and name: looking a class up would import its module, and importing
    a Qwen-VL module installs the plugin's backend for it."""
    known = {(f"transformers.models.{family}.modeling_{family}", name): family
             for family, name in _families().items()}
    for cls in type(attn).__mro__:
        family = known.get((cls.__module__, cls.__name__))
        if family is not None:
            return family
    return None


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
                    f"supports Llama, Mistral and Qwen2 decoders and the language models of Qwen2-VL, "
                    f"Qwen2.5-VL and Qwen3-VL")


def check_supported(decoder):
    """Raise TypeError naming what the runtime cannot run on this decoder."""
    if not (_version() == (4, 37) or _version() >= (4, 54)):
        raise TypeError(f"decoder-side pruning runs on transformers 4.37 (upstream llava) or >= 4.54; "
                        f"found {transformers.__version__}")
    for layer in decoder.layers:
        attn = getattr(layer, "self_attn", None)
        if family_of(attn) is None:
            raise TypeError(f"decoder-side pruning supports {', '.join(_families().values())} decoders; "
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
    """transformers >= 4.54: (cos, sin) of shape (1 or batch, length, head_dim) for every layer."""

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


class _SectionedRotary(_SharedRotary):
    """Qwen2-VL and Qwen2.5-VL on transformers 4.x: (cos, sin) of shape (3, batch, length,
    head_dim), one table per M-RoPE row, mixed by each attention with its ``mrope_section``;
    layers return tuples."""

    def cos_sin(self, attn, kwargs, value, rope_len):
        sections = list(attn.rope_scaling["mrope_section"]) * 2
        # as apply_multimodal_rotary_pos_emb mixes them: channel chunk i from row i % 3
        return tuple(torch.cat([chunk[i % 3] for i, chunk in enumerate(table.split(sections, dim=-1))], dim=-1)
                     for table in kwargs["position_embeddings"])

    def gather_positions(self, kwargs, index):
        batch = index.shape[0]
        return {"position_embeddings": tuple(
            table.expand(-1, batch, -1, -1).gather(
                2, index[None, :, :, None].expand(table.shape[0], -1, -1, table.shape[-1]))
            for table in kwargs["position_embeddings"])}

    def layer_output(self, hidden, cache, kwargs):
        return (hidden, None) if kwargs.get("output_attentions") else (hidden,)


def calling_convention(decoder=None):
    """How ``decoder``'s layers are called on the installed transformers."""
    if _version() < (4, 54):
        return _PerAttentionRotary()
    attn = decoder.layers[0].self_attn if decoder is not None else None
    if attn is not None and family_of(attn) in MROPE_FAMILIES and _mixes_sections(attn):
        return _SectionedRotary()
    return _SharedRotary()


def _mixes_sections(attn):
    """Whether this attention mixes per-row M-RoPE tables itself (transformers 4.x Qwen2-VL, Qwen2.5-VL)."""
    module = sys.modules.get(type(attn).__module__)
    scaling = getattr(attn, "rope_scaling", None)
    return (hasattr(module, "apply_multimodal_rotary_pos_emb") and isinstance(scaling, dict)
            and "mrope_section" in scaling)


def head_norms(attn):
    """(query norm, key norm) applied per head before the rotary embedding (Qwen3-VL), or (None, None)."""
    return getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
