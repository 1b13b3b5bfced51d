"""LLaVA-NeXT (anyres) bookkeeping: which tile patches survive, and the order
in which kept tokens reach the LLM.

Upstream turns one image into a base crop plus a grid of tiles, lays the tiles
out as one big patch map, cuts the letterbox padding off that map
(``spatial_unpad``), appends one ``image_newline`` per map row and flattens
row-major, base tokens first. Here the same layout is computed for a *subset*
of each crop's patches: kept tokens stay in raster order within the map and a
row's newline is kept only when the row keeps a token. With every token kept
the result equals upstream's sequence exactly.

Pure tensor code; upstream's ``unpad_image`` is passed in, not imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


@dataclass(frozen=True)
class TileLayout:
    """Tile grid of one image and the part of its patch map the model keeps."""

    tiles_high: int
    tiles_wide: int
    side: int                      # patches per crop side (24 for CLIP-L/336)
    rows: Tuple[int, int]          # kept patch-map rows [start, stop)
    cols: Tuple[int, int]          # kept patch-map columns [start, stop)

    @property
    def num_tiles(self) -> int:
        return self.tiles_high * self.tiles_wide

    def tile_valid(self, tile: int) -> torch.Tensor:
        """(side*side,) bool: the tile's patches inside the kept region."""
        r0, c0 = divmod(tile, self.tiles_wide)
        rows = torch.arange(r0 * self.side, (r0 + 1) * self.side)
        cols = torch.arange(c0 * self.side, (c0 + 1) * self.side)
        inside_r = (rows >= self.rows[0]) & (rows < self.rows[1])
        inside_c = (cols >= self.cols[0]) & (cols < self.cols[1])
        return (inside_r[:, None] & inside_c[None, :]).flatten()


def tile_layout(
    tiles_wide: int, tiles_high: int, side: int, image_size, unpad: Optional[Callable] = None,
) -> TileLayout:
    """Layout of one image. ``unpad`` is upstream's ``unpad_image``; it is run
    on a map of patch indices, so the kept region is exactly what upstream keeps."""
    height, width = tiles_high * side, tiles_wide * side
    if unpad is None:
        return TileLayout(tiles_high, tiles_wide, side, (0, height), (0, width))
    index = torch.arange(height * width).view(1, height, width)
    kept = unpad(index, image_size)[0]
    first = int(kept[0, 0])
    r0, c0 = divmod(first, width)
    return TileLayout(tiles_high, tiles_wide, side, (r0, r0 + kept.shape[0]), (c0, c0 + kept.shape[1]))


def assemble(
    base: torch.Tensor,
    tiles: torch.Tensor,
    kept_tiles: Sequence[torch.Tensor],
    layout: TileLayout,
    merge_type: str,
    newline: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The image's token sequence for the LLM.

    base: (k_base, dim) kept base-crop features, already in raster order.
    tiles: (num_tiles, side*side, dim) features of every tile patch.
    kept_tiles: per tile, ascending indices of its kept patches.
    """
    if merge_type == "flat":
        return torch.cat([base] + [tiles[t][kept_tiles[t]] for t in range(len(kept_tiles))])
    side, wide = layout.side, layout.tiles_wide
    height, width = layout.tiles_high * side, wide * side
    mask = torch.zeros(height, width, dtype=torch.bool)
    for t, kept in enumerate(kept_tiles):
        r0, c0 = divmod(t, wide)
        block = torch.zeros(side * side, dtype=torch.bool)
        block[kept] = True
        mask[r0 * side:(r0 + 1) * side, c0 * side:(c0 + 1) * side] = block.view(side, side)
    # (tiles_high, tiles_wide, side, side, dim) -> one (height, width, dim) patch map
    grid = tiles.view(layout.tiles_high, wide, side, side, -1).permute(0, 2, 1, 3, 4).reshape(height, width, -1)
    if merge_type == "spatial":
        return torch.cat([base, grid[mask]])
    if merge_type != "spatial_unpad":
        raise ValueError(f"mm_patch_merge_type={merge_type!r}: expected one of {', '.join(MERGE_TYPES)}")
    (r0, r1), (c0, c1) = layout.rows, layout.cols
    pieces: List[torch.Tensor] = [base]
    newline = newline.to(device=grid.device, dtype=grid.dtype)[None]
    for row in range(r0, r1):
        keep = mask[row, c0:c1]
        if keep.any():
            pieces += [grid[row, c0:c1][keep.to(grid.device)], newline]
    return torch.cat(pieces)


def unpruned_length(layout: Optional[TileLayout], merge_type: str, num_crops: int, crop_tokens: int) -> int:
    """Tokens upstream feeds for one image (newlines included).

    ``layout`` is None when upstream lays out no tile map: ``flat`` merging or
    an image with its base crop only (which gets one newline when unpadding)."""
    unpad = merge_type == "spatial_unpad"
    if layout is None:
        return crop_tokens * num_crops + int(unpad and num_crops == 1)
    if not unpad:
        return crop_tokens * num_crops
    rows = layout.rows[1] - layout.rows[0]
    return crop_tokens + rows * (layout.cols[1] - layout.cols[0] + 1)


def packed_positions(layout: TileLayout, base: torch.Tensor, kept_tiles: Sequence[torch.Tensor],
                     newline: bool) -> torch.Tensor:
    """Positions of the kept tokens in the full ``spatial_unpad`` sequence of one image
    (base crop first, then the unpadded map row by row, a newline closing each row
    when ``newline``). A row's newline is kept when the row keeps a token; in raster order.
    """
    side, crop_tokens = layout.side, layout.side * layout.side
    (r0, r1), (c0, c1) = layout.rows, layout.cols
    stride = c1 - c0 + int(newline)
    positions = [base.long()]
    kept_rows = set()
    for tile, kept in enumerate(kept_tiles):
        tile_row, tile_col = divmod(tile, layout.tiles_wide)
        y, x = kept.long() // side, kept.long() % side
        rows, cols = tile_row * side + y - r0, tile_col * side + x - c0
        inside = (rows >= 0) & (rows < r1 - r0) & (cols >= 0) & (cols < c1 - c0)
        positions.append(crop_tokens + rows[inside] * stride + cols[inside])
        kept_rows.update(rows[inside].tolist())
    if newline:
        positions.append(torch.tensor([crop_tokens + r * stride + stride - 1 for r in sorted(kept_rows)],
                                      dtype=torch.long))
    return torch.sort(torch.cat(positions)).values
