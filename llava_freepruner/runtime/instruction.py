"""The user's instruction of each image, recovered from a spliced prompt's token ids.

Text-conditioned methods (CDPruner) score visual tokens against the question.
The hosts hand the vision side token ids only, so the instruction is the text
that follows an image's placeholder, cut at the next placeholder or where the
assistant's turn begins. Official CDPruner passes the raw question with the
answer-format line removed; the same line is removed here. Pure code: the caller
decodes ids.

Upstream llava marks each image with one placeholder id; transformers' processors
expand each image's placeholder into as many tokens as it has features
(:func:`expanded_instructions`).
"""

from __future__ import annotations

import bisect
from typing import Callable, Collection, Iterable, List, Optional, Sequence

import torch

IMAGE_TOKEN_INDEX = -200
# Where the user's turn ends in llava's conversation templates (vicuna/v1,
# llama_2, chatml/mpt, v0).
TURN_ENDS = ("ASSISTANT:", "[/INST]", "<|im_end|>", "<|im_start|>assistant", "###")
# The answer-format line that CDPruner's eval scripts remove from the question.
FORMAT_SUFFIXES = ("Answer the question using a single word or phrase.",)
_PADDING = -1       # a padded position, once the ids are on the host (token ids are >= 0, upstream's image -200)

Decode = Callable[[Sequence[int]], str]


def clean_instruction(text: str) -> str:
    """Cut ``text`` at the end of the user's turn and drop the answer-format line."""
    ends = [text.find(mark) for mark in TURN_ENDS if mark in text]
    if ends:
        text = text[:min(ends)]
    text = text.strip()
    for suffix in FORMAT_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)].strip()
    return text


def prompt_rows(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> List[List[int]]:
    """Each prompt's ids on the host with its padding left out, in one read of the
    device. ``attention_mask``: (batch, length), 0/False at padding; None (or a mask
    of another shape, such as a 4-D one) leaves every position in."""
    if attention_mask is not None and tuple(attention_mask.shape) == tuple(input_ids.shape):
        input_ids = input_ids.masked_fill(attention_mask.to(input_ids.device) == 0, _PADDING)
    return [[token for token in row if token != _PADDING] for row in input_ids.tolist()]


def _text_after(row: List[int], end: int, stops: List[int], decode: Decode) -> str:
    """The cleaned text of ``row`` from ``end`` to the first position in ``stops`` (ascending) at or after it."""
    at = bisect.bisect_left(stops, end)
    return clean_instruction(decode(row[end:stops[at] if at < len(stops) else len(row)]))


def image_instructions(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    decode: Decode,
    image_token_index: int = IMAGE_TOKEN_INDEX,
) -> List[str]:
    """Upstream llava: one instruction per image, in the order upstream consumes
    images: the text after the image's placeholder (one id per image) up to the
    next one or the end of the user's turn. A sample without a placeholder consumes
    one image (as upstream does), with its whole prompt as instruction."""
    instructions = []
    for row in prompt_rows(input_ids, attention_mask):
        marks = [i for i, token in enumerate(row) if token == image_token_index]
        if not marks:
            instructions.append(clean_instruction(decode(row)))
        instructions += [_text_after(row, mark + 1, marks, decode) for mark in marks]
    return instructions


def expanded_instructions(
    rows: List[List[int]],
    decode: Decode,
    token_id: int,
    lengths: Iterable[int],
    placeholder_ids: Collection[int] = (),
) -> List[str]:
    """transformers' processors: one instruction per item (image or video) whose
    placeholders, ``lengths[i]`` tokens ``token_id`` each, the prompts ``rows``
    (:func:`prompt_rows`) hold in order, prompt after prompt; a prompt without
    them consumes none. An item's instruction is the text after its last
    placeholder up to the next placeholder of any kind (``token_id`` or one of
    ``placeholder_ids``, say videos beside images) or the end of the user's turn:
    adjacent items split a run of placeholders by their lengths."""
    stopping = set(placeholder_ids) | {token_id}
    lengths = list(lengths)
    instructions, item = [], 0
    for row in rows:
        marks = [i for i, token in enumerate(row) if token == token_id]
        stops = [i for i, token in enumerate(row) if token in stopping]
        used = 0
        while used < len(marks):
            if item == len(lengths) or used + lengths[item] > len(marks):
                break
            used += lengths[item]
            instructions.append(_text_after(row, marks[used - 1] + 1, stops, decode))
            item += 1
        if used != len(marks):
            break
    if item != len(lengths) or sum(lengths) != sum(row.count(token_id) for row in rows):
        raise RuntimeError(f"the prompts hold {sum(row.count(token_id) for row in rows)} placeholders of token "
                           f"{token_id}, the {len(lengths)} items passed make {sum(lengths)}: the instruction of "
                           "each cannot be told")
    return instructions
