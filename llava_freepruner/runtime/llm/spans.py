"""Where the visual tokens sit in the sequence that upstream LLaVA splices.

Mirrors ``LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal``: padding is
stripped with the attention mask, each ``-200`` placeholder is replaced by the
features of the next image, sequences are truncated to the tokenizer's maximum
length and padded again on the configured side.
"""

IMAGE_TOKEN_INDEX = -200
PADDING_SIDES = ("right", "left")


def visual_spans(input_ids, attention_mask, image_token_counts, max_length=None,
                 padding_side="right", image_token_index=IMAGE_TOKEN_INDEX):
    """Return, per sample, the ``[start, end)`` spans of visual tokens after the splice.

    ``input_ids``: (batch, seq) ids with ``image_token_index`` placeholders (a tensor, or
    its rows as lists when the caller has read them already).
    ``attention_mask``: (batch, seq) or None (no padding).
    ``image_token_counts``: the number of visual tokens of each image, in the order
    upstream consumes them (a text-only sample consumes one image, as upstream does).
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r} is not one of {PADDING_SIDES}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length!r} must be a positive int or None")
    counts = [int(c) for c in image_token_counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"image_token_counts={counts} must be non-negative")

    rows = input_ids if isinstance(input_ids, list) else input_ids.tolist()
    masks = attention_mask.bool().tolist() if attention_mask is not None else [[True] * len(r) for r in rows]

    cursor = 0
    per_sample, lengths = [], []
    for row, mask in zip(rows, masks):
        ids = [t for t, keep in zip(row, mask) if keep]
        spans, position = [], 0
        if image_token_index not in ids:
            cursor += 1
        for token in ids:
            if token != image_token_index:
                position += 1
                continue
            if cursor >= len(counts):
                raise ValueError(
                    f"image_token_counts has {len(counts)} entries, but the prompts hold more "
                    f"image placeholders ({image_token_index}) than that")
            spans.append((position, position + counts[cursor]))
            position += counts[cursor]
            cursor += 1
        if max_length is not None:
            position = min(position, max_length)
            spans = [(s, min(e, max_length)) for s, e in spans if s < max_length]
        per_sample.append([(s, e) for s, e in spans if e > s])
        lengths.append(position)

    padded_length = max(lengths, default=0)
    if padding_side == "left":
        per_sample = [[(s + padded_length - n, e + padded_length - n) for s, e in spans]
                      for spans, n in zip(per_sample, lengths)]
    return per_sample
