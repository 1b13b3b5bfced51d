"""What the transformers tests share: chat prompts through the processor, generate(), cache lengths."""

import torch


def prompt(processor, question, images=1):
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def inputs_for(processor, images, questions, padding_side="left", per_prompt=1):
    processor.tokenizer.padding_side = padding_side
    texts = [prompt(processor, q, per_prompt) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def generate(model, inputs, **kwargs):
    kwargs = {"max_new_tokens": 5, "do_sample": False, **kwargs}
    with torch.no_grad():
        return model.generate(**inputs, return_dict_in_generate=True, output_scores=True, **kwargs)


def cache_of(output):
    """The KV cache a forward or generate() output holds (5.x forward outputs call it ``cache``)."""
    return output.past_key_values if getattr(output, "past_key_values", None) is not None else output.cache


def layer_lengths(cache):
    """Tokens each attention layer's cache holds (Qwen3.5's linear-attention layers hold a
    recurrent state instead, and are left out)."""
    if hasattr(cache, "layers"):
        return [layer.keys.shape[-2] for layer in cache.layers if hasattr(layer, "keys")]
    return [cache.key_cache[i].shape[-2] for i in range(len(cache.key_cache))]


def check_beams_and_return_sequences_at_ratio_one(model, inputs, plugin):
    """Beam search and several sampled sequences at ratio 1.0 give the host's sequences."""
    beams = generate(model, inputs, num_beams=2, max_new_tokens=3)
    torch.manual_seed(0)
    sampled = generate(model, inputs, do_sample=True, top_k=5, num_return_sequences=2, max_new_tokens=3)
    plugin(ratio=1.0)
    assert torch.equal(generate(model, inputs, num_beams=2, max_new_tokens=3).sequences, beams.sequences)
    torch.manual_seed(0)
    again = generate(model, inputs, do_sample=True, top_k=5, num_return_sequences=2, max_new_tokens=3)
    assert torch.equal(again.sequences, sampled.sequences)
