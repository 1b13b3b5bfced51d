"""Make the sequence a language model sees shorter, and keep its decode steps consistent.

A host that checks one placeholder per visual token (transformers' LLaVA classes)
expands every image to its full count in ``input_ids``. After selection the
dropped placeholders leave the sequence the decoder runs on, in one place: its
forward. :class:`Compression` holds, per sample, which prompt positions stay and
translates what the caller passes (embeddings, 2-D attention mask, position ids,
cache positions) at prefill and at every decode step, so that the caller's own
bookkeeping (``generate()``'s ``input_ids``, mask and cache positions) stays at
full length while the KV cache holds only the kept positions.

Rules:
- kept positions keep their order; samples that keep fewer positions get masked
  filler slots, on the side their padding is on (left padding or none: fillers on
  the left, so every sample's last token stays last);
- 1-D position ids are renumbered as if the dropped tokens had never been in the
  prompt (what the unpruned model does with a shorter prompt); multimodal rotary
  position ids (Qwen-VL's M-RoPE: (3, batch, length) temporal/height/width rows,
  or (4, batch, length) with a text row first) keep the values the full prompt
  gave them, so every kept token and the text after it see the rotary angles of
  the unpruned run, and decode steps go on from the caller's own ids; only the
  text row, which the host reads for its attention mask, is renumbered;
- the decoder's output is scattered back to full length; a dropped position
  carries the output of the nearest kept position before it, so the last
  position is the last token the decoder saw.

Pure tensor code; no host import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Compression:
    drop: torch.Tensor       # (batch, length) bool: prompt positions that leave the sequence
    index: torch.Tensor      # (batch, width) prompt position of each compressed slot, -1 for fillers
    removed: torch.Tensor    # (batch,) prompt positions each sample drops
    prompt_mask: Optional[torch.Tensor] = None   # (batch, width) compressed prompt mask, once known
    # Known on the host at prefill: no padding and no filler slot, so a caller that passes no
    # mask needs none on the shortened sequence either (building one makes the host's mask
    # code read it back from the device at every step).
    unmasked: bool = False

    @classmethod
    def from_drop(cls, drop: torch.Tensor, width: int,
                  attention_mask: Optional[torch.Tensor] = None) -> "Compression":
        """``drop``: (batch, length) bool, True where a position leaves the sequence; ``width``:
        the most positions a sample keeps, from the caller (reading it off ``drop`` would wait
        for the device)."""
        batch, length = drop.shape
        keep = ~drop
        kept = keep.sum(dim=1)
        start = width - kept                # first slot of each sample's kept positions
        if attention_mask is not None:      # one right-padded prompt puts every sample's fillers last
            start = start * attention_mask[:, -1].bool().all()
        slot = (keep.cumsum(dim=1) + (start - 1)[:, None]).masked_fill(drop, width)
        positions = torch.arange(length, device=drop.device).expand(batch, -1)
        return cls(drop, _place(slot, positions, width), length - kept)

    @property
    def length(self) -> int:
        return self.drop.shape[1]

    @property
    def width(self) -> int:
        return self.index.shape[1]

    @property
    def fillers(self) -> torch.Tensor:
        return self.index < 0

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, ...) -> (batch, width, ...); fillers get zeros."""
        shape = self.index.shape + x.shape[2:]
        idx = self.index.clamp(min=0).view(self.index.shape + (1,) * (x.dim() - 2)).expand(shape)
        out = x.gather(1, idx)
        filler = self.fillers.view(self.index.shape + (1,) * (x.dim() - 2))
        return out.masked_fill(filler, 0)

    def compress_prompt_mask(self, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The compressed 2-D prompt mask (fillers masked); kept for the decode steps."""
        if attention_mask is None:
            attention_mask = torch.ones(self.index.shape[0], self.length, dtype=torch.long, device=self.index.device)
        self.prompt_mask = self.gather(attention_mask)
        return self.prompt_mask

    def dropped_before(self) -> torch.Tensor:
        """(batch, width): prompt positions dropped before each slot."""
        return torch.cumsum(self.drop.long(), dim=1).gather(1, self.index.clamp(min=0))

    def prefill_positions(self, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """Position ids of the compressed prompt, renumbered over the kept positions
        (M-RoPE rows: the full prompt's, see the module notes)."""
        if position_ids is not None and position_ids.dim() == 3:
            kept = torch.stack([self._gather_positions(rows) for rows in position_ids])
            if position_ids.shape[0] == 4:
                kept[0] = self.prefill_positions(position_ids[0])
            return kept
        if position_ids is None:
            position_ids = torch.arange(self.length, device=self.index.device)[None]
        positions = position_ids.expand(self.index.shape[0], -1)
        out = positions.gather(1, self.index.clamp(min=0)) - self.dropped_before()
        return out.masked_fill(self.fillers, 0)

    def _gather_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length) ids -> (batch, width) of the kept positions, unchanged; fillers 0."""
        out = position_ids.expand(self.index.shape[0], -1).gather(1, self.index.clamp(min=0).to(position_ids.device))
        return out.masked_fill(self.fillers.to(out.device), 0)

    def decode_positions(self, position_ids: Optional[torch.Tensor], past_full: int, steps: int) -> torch.Tensor:
        """Position ids of a decode step; ``past_full`` counts prompt and earlier steps as the caller does.
        M-RoPE rows are the caller's (they continue the full prompt); a text row is renumbered."""
        if position_ids is not None and position_ids.dim() == 3:
            if position_ids.shape[0] != 4:
                return position_ids
            return torch.cat([self.decode_positions(position_ids[0], past_full, steps)[None], position_ids[1:]])
        if position_ids is None:
            position_ids = torch.arange(past_full, past_full + steps, device=self.index.device)[None]
        return position_ids.expand(self.index.shape[0], -1) - self.removed[:, None].to(position_ids.device)

    def decode_mask(self, attention_mask: Optional[torch.Tensor], total_full: int) -> torch.Tensor:
        """Caller's (batch, total_full) mask of a decode step -> the compressed one."""
        prompt = self.prompt_mask
        if attention_mask is None:
            tail = prompt.new_ones(prompt.shape[0], total_full - self.length)
        else:
            tail = attention_mask[:, self.length:].to(prompt.dtype)
        return torch.cat([prompt, tail], dim=1)

    def expand(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, width, dim) decoder output -> (batch, length, dim), dropped positions
        carrying the output of the nearest kept position before them (zeros if none)."""
        index = self.index.to(hidden.device)
        slots = torch.arange(self.width, device=hidden.device).expand(index.shape[0], -1)
        slot_at = _place(index.masked_fill(index < 0, self.length), slots, self.length)
        source = torch.cummax(slot_at, dim=1).values
        out = hidden.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        return out.masked_fill((source < 0)[..., None], 0)


def _place(columns: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """(batch, size) table holding ``values`` at ``columns``, -1 elsewhere; a column of
    ``size`` is the spare where unwanted values go (a fixed shape, no host read)."""
    table = torch.full((columns.shape[0], size + 1), -1, dtype=values.dtype, device=values.device)
    return table.scatter_(1, columns, values)[:, :size]
