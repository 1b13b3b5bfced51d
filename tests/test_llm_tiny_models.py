"""Tiny offline LLaVA-LLaMA models for the decoder-side pruning tests (and their sanity tests)."""

import torch
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

VOCAB = 256


def tiny_config(layers=32, hidden=64, heads=4, kv_heads=4, attn="sdpa", **extra):
    config = LlavaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, **extra)
    config._attn_implementation = attn
    return config


def init_weights(model, seed=0, std=0.3):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_llava(seed=0, **config_kwargs):
    model = LlavaLlamaForCausalLM(tiny_config(**config_kwargs))
    return init_weights(model, seed).eval()


def prompt_embeds(model, num_visual, system=12, text=9, seed=1):
    """Embeddings of [system text | visual tokens | text] and the visual span."""
    generator = torch.Generator().manual_seed(seed)
    before = torch.randint(0, VOCAB, (system,), generator=generator)
    after = torch.randint(0, VOCAB, (text,), generator=generator)
    embed = model.get_model().embed_tokens
    visual = torch.randn(num_visual, model.config.hidden_size, generator=generator) * 0.5
    with torch.no_grad():
        embeds = torch.cat([embed(before), visual, embed(after)])
    return embeds, (system, system + num_visual)


def test_tiny_model_is_deterministic_and_deep():
    a, b = tiny_llava(seed=3), tiny_llava(seed=3)
    assert len(a.get_model().layers) == 32
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.lm_head.weight, tiny_llava(seed=4).lm_head.weight)
