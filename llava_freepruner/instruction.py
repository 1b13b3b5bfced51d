"""The user's instruction of each image, recovered from a spliced prompt's token ids.

Text-conditioned methods (CDPruner) score visual tokens against the question.
Upstream llava hands the model token ids only, so the instruction is the text
that follows an image placeholder, cut where the assistant's turn begins.
Official CDPruner passes the raw question with the answer-format line
removed; the same line is removed here. Pure code: the caller decodes ids.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

IMAGE_TOKEN_INDEX = -200
# Where the user's turn ends in llava's conversation templates (vicuna/v1,
# llama_2, chatml/mpt, v0).
TURN_ENDS = ("ASSISTANT:", "[/INST]", "<|im_end|>", "<|im_start|>assistant", "###")
# The answer-format line that CDPruner's eval scripts remove from the question.
FORMAT_SUFFIXES = ("Answer the question using a single word or phrase.",)


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


def image_instructions(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    decode: Callable[[Sequence[int]], str],
    image_token_index: int = IMAGE_TOKEN_INDEX,
) -> List[str]:
    """One instruction per image, in the order upstream consumes images: the
    text after the image's placeholder up to the next one or the end of the
    user's turn. A sample without a placeholder consumes one image (as upstream
    does), with its whole prompt as instruction."""
    instructions = []
    for b, row in enumerate(input_ids.tolist()):
        if attention_mask is not None:
            row = [t for t, keep in zip(row, attention_mask[b].tolist()) if keep]
        marks = [i for i, token in enumerate(row) if token == image_token_index]
        if not marks:
            instructions.append(clean_instruction(decode(row)))
            continue
        for n, mark in enumerate(marks):
            end = marks[n + 1] if n + 1 < len(marks) else len(row)
            instructions.append(clean_instruction(decode(row[mark + 1:end])))
    return instructions
