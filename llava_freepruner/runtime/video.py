"""Video budgets and temporal redundancy: which tokens of each frame reach the LLM.

A video reaches the LLM as its frames in temporal order, each frame a block of
``prefix`` tokens (Video-LLaVA's [CLS]) and a grid of cells (patches, or the
pooled cells of LLaVA-NeXT-Video and OneVision), then ``trailing`` tokens
(OneVision's one newline per video). Budgets count those tokens.

Modes (``FREEPRUNER_VIDEO``):

- ``frame``: every frame keeps round(r x its tokens), chosen on its own attention.
- ``temporal``: a cell whose feature has cosine similarity >= tau with the same
  cell of the previous frame is redundant (the first frame has none); each frame
  keeps round(r x its tokens) among its non-redundant cells only, fewer when
  fewer remain. A still video keeps about one frame's budget in all.

Prefix and trailing tokens are always kept. Kept cells stay in raster order
within a frame; a merging method's rows (VisionZip's [CLS] and contextual
tokens) go around them as on images (:func:`pack_frames`), and count toward the
frame's budget. Pure tensor code; no host import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .methods.base import CropRequest, Selection


@dataclass(frozen=True)
class FrameLayout:
    """How the frames of one video are laid out in the sequence the LLM sees."""

    frames: int
    cells: Tuple[int, int]       # rows, columns of one frame's grid as the LLM sees it
    prefix: int = 0              # tokens before each frame's cells, always kept
    trailing: int = 0            # tokens after the last frame, always kept

    @property
    def num_cells(self) -> int:
        return self.cells[0] * self.cells[1]

    @property
    def frame_tokens(self) -> int:
        return self.prefix + self.num_cells

    @property
    def tokens(self) -> int:
        return self.frames * self.frame_tokens + self.trailing

    def frame_cells(self, features: torch.Tensor) -> torch.Tensor:
        """(tokens, dim) features of the video -> (frames, cells, dim) of its cells."""
        body = features[: self.frames * self.frame_tokens].reshape(self.frames, self.frame_tokens, -1)
        return body[:, self.prefix:]


def frame_budget(config, layout: FrameLayout) -> int:
    """Cells each frame keeps: ``config.budget`` of the frame's tokens, less its prefix."""
    return max(0, config.budget(layout.frame_tokens) - layout.prefix)


def temporal_redundancy(cells: torch.Tensor, tau: float) -> torch.Tensor:
    """(frames, cells, dim) -> (frames, cells) bool: True where a cell's cosine
    similarity with the same cell of the previous frame is >= ``tau``."""
    redundant = torch.zeros(cells.shape[:2], dtype=torch.bool, device=cells.device)
    if cells.shape[0] > 1:
        similarity = torch.nn.functional.cosine_similarity(cells[1:].float(), cells[:-1].float(), dim=-1)
        redundant[1:] = similarity >= tau
    return redundant


def novel_requests(requests: Sequence[CropRequest], redundant: torch.Tensor) -> List[CropRequest]:
    """The requests of a video's frames, narrowed to their non-redundant cells.

    The one read of the device in temporal mode: how many cells each frame has
    left decides how many it keeps, so the flags of all frames come to the host at once."""
    novel = ~redundant.cpu()
    return [CropRequest(r.budget, flags if r.valid is None else r.valid & flags, r.instruction)
            for r, flags in zip(requests, novel)]


def kept_positions(layout: FrameLayout, kept: Sequence[torch.Tensor]) -> torch.Tensor:
    """Positions of the kept tokens in the video's sequence, ascending: per frame
    its prefix and kept cells (``kept[f]``, ascending), then the trailing tokens."""
    pieces = []
    for frame, cells in enumerate(kept):
        start = frame * layout.frame_tokens
        pieces += [torch.arange(start, start + layout.prefix), start + layout.prefix + cells.cpu().long()]
    pieces.append(torch.arange(layout.tokens - layout.trailing, layout.tokens))
    return torch.cat(pieces)


def pack_frames(layout: FrameLayout, features: torch.Tensor, selections: Sequence[Selection],
                project: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One video's features with the tokens each frame keeps at the front of its cells, and their positions.

    features: (tokens, dim), the host's (the trailing tokens may be absent: they stay as they are).
    A frame keeps its prefix tokens where they are; its first cell slots then hold the
    selection's ``prefix`` rows, its kept cells in raster order and its ``merged`` rows,
    those rows taken to the LLM's width by ``project``. Returns (features, positions kept)."""
    def projected(rows: Optional[torch.Tensor]) -> List[torch.Tensor]:
        return [] if rows is None else [project(rows).to(features)]

    body = layout.frames * layout.frame_tokens
    frames = []
    for frame, selection in zip(features[:body].unflatten(0, (layout.frames, layout.frame_tokens)), selections):
        cells = frame[layout.prefix:]
        kept = torch.cat(projected(selection.prefix) + [cells[selection.indices.to(cells.device)]]
                         + projected(selection.merged))
        frames.append(torch.cat([frame[:layout.prefix], kept, cells[kept.shape[0]:]]))
    packed = torch.cat(frames + [features[body:]])
    return packed, kept_positions(layout, [torch.arange(s.num_tokens) for s in selections])


def pool_matrix(pool: Callable[[torch.Tensor], torch.Tensor], num_patches: int) -> torch.Tensor:
    """(cells, patches) weights of a linear pooling ``pool``: (1, patches, dim) ->
    (1, cells, dim), found by pooling the identity (one basis feature per patch)."""
    with torch.no_grad():
        return pool(torch.eye(num_patches)[None])[0].float()


def video_record(layout: FrameLayout, selections: Sequence[Selection], redundant: Optional[torch.Tensor],
                 mode: str, tau: Optional[float]) -> dict:
    """The stats of one video: tokens before/after, and per frame kept, pivotal and redundant counts."""
    kept = [s.num_tokens + layout.prefix for s in selections]
    record = {"kind": "video", "frames": layout.frames, "video_mode": mode,
              "tokens_in": layout.tokens, "tokens_out": sum(kept) + layout.trailing,
              "frame_tokens_in": layout.frame_tokens, "frame_kept": kept,
              "frame_pivotal": [s.num_pivotal for s in selections]}
    if redundant is not None:
        record.update(tau=tau, frame_redundant=[int(r.sum()) for r in redundant])
    return record
