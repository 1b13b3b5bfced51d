"""LLaVA-NeXT (anyres) bookkeeping: which tile patches survive, and the order
in which kept tokens reach the LLM.

Upstream turns one image into a base crop plus a grid of tiles, lays the tiles
out as one big patch map, cuts the letterbox padding off that map
(``spatial_unpad``), appends one ``image_newline`` per map row and flattens
row-major, base tokens first. Here the same layout is computed for a *subset*
of each crop's patches: kept tokens stay in raster order within the map and a
row's newline goes only when pruning empties the row (unpadding an extreme
aspect ratio can leave no row at all, or rows of no patch, which keep their
newlines). With every token kept the result equals upstream's sequence exactly.

Pure tensor code; upstream's ``unpad_image`` is passed in, not imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

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
    # LLaVA-OneVision shrinks a large unpadded map by bilinear interpolation to
    # (rows, cols) cells; each cell is represented by the patch nearest its centre.
    resampled: Optional[Tuple[int, int]] = None

    @property
    def num_tiles(self) -> int:
        return self.tiles_high * self.tiles_wide

    def row_sources(self) -> torch.Tensor:
        """Patch-map row behind each row of the map the LLM sees."""
        return _sources(self.rows, None if self.resampled is None else self.resampled[0])

    def col_sources(self) -> torch.Tensor:
        return _sources(self.cols, None if self.resampled is None else self.resampled[1])

    def tile_valid(self, tile: int) -> torch.Tensor:
        """(side*side,) bool: the tile's patches behind a token the LLM sees."""
        r0, c0 = divmod(tile, self.tiles_wide)
        rows = torch.arange(r0 * self.side, (r0 + 1) * self.side)
        cols = torch.arange(c0 * self.side, (c0 + 1) * self.side)
        inside_r = torch.isin(rows, self.row_sources())
        inside_c = torch.isin(cols, self.col_sources())
        return (inside_r[:, None] & inside_c[None, :]).flatten()


def _sources(span: Tuple[int, int], cells: Optional[int]) -> torch.Tensor:
    start, stop = span
    if cells is None:
        return torch.arange(start, stop)
    # bilinear interpolation without corner alignment puts cell i's centre at
    # (i + 0.5) * scale - 0.5 in source coordinates
    scale = (stop - start) / cells
    centre = (torch.arange(cells, dtype=torch.float64) + 0.5) * scale - 0.5
    return start + torch.floor(centre + 0.5).long().clamp(0, stop - start - 1)


def resampled_shape(layout: TileLayout, max_crops: int) -> Optional[Tuple[int, int]]:
    """The map OneVision's ``anyres_max_N`` makes of a layout (None: not resampled)."""
    height, width = layout.rows[1] - layout.rows[0], layout.cols[1] - layout.cols[0]
    ratio = math.sqrt(height * width / (max_crops * layout.side ** 2))
    if ratio <= 1.1:
        return None
    return int(height // ratio), int(width // ratio)


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
    # Unpadding cuts rows or columns, never both: at an extreme aspect ratio it
    # can cut all of them, and the other axis is then kept whole from 0.
    r0, c0 = divmod(int(kept[0, 0]), width) if kept.numel() else (0, 0)
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
    kept_tiles: per tile, ascending indices of its kept patches, on the host: which
    rows go where is planned there, and the device gathers them in one index.
    """
    if merge_type == "flat":
        offsets = [t * tiles.shape[1] + kept for t, kept in enumerate(kept_tiles)]
        return torch.cat([base, _take(tiles.reshape(-1, tiles.shape[-1]), torch.cat(offsets))])
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
        return torch.cat([base, _take(grid.reshape(height * width, -1), torch.nonzero(mask.flatten()).flatten())])
    if merge_type != "spatial_unpad":
        raise ValueError(f"mm_patch_merge_type={merge_type!r}: expected one of {', '.join(MERGE_TYPES)}")
    (r0, r1), (c0, c1) = layout.rows, layout.cols
    columns = c1 - c0
    # the unpadded map with its newline column: row i holds positions i*(columns+1) ..
    newline = newline.to(device=grid.device, dtype=grid.dtype)[None, None].expand(r1 - r0, 1, -1)
    rows = torch.cat([grid[r0:r1, c0:c1], newline], dim=1).reshape((r1 - r0) * (columns + 1), grid.shape[-1])
    positions = []
    for row in range(r0, r1):
        keep = mask[row, c0:c1]
        if keep.any() or columns == 0:      # a row emptied by pruning loses its newline too
            start = (row - r0) * (columns + 1)
            positions += [start + torch.nonzero(keep).flatten(), torch.tensor([start + columns])]
    index = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
    return torch.cat([base, _take(rows, index)])


def _take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]`` for a host ``index``, sent to the device without waiting."""
    return rows.index_select(0, index.to(rows.device, non_blocking=True))


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
    (base crop first, then the map the LLM sees row by row, a newline closing each row
    when ``newline``). A row's newline is kept when the row keeps a token or has no
    patch to keep (a map unpadded to zero columns); in raster order.
    """
    side, crop_tokens = layout.side, layout.side * layout.side
    row_of = {int(r): i for i, r in enumerate(layout.row_sources())}
    col_of = {int(c): j for j, c in enumerate(layout.col_sources())}
    stride = len(col_of) + int(newline)
    positions, kept_rows = base.long().tolist(), set()
    for tile, kept in enumerate(kept_tiles):
        tile_row, tile_col = divmod(tile, layout.tiles_wide)
        for patch in kept.tolist():
            y, x = divmod(patch, side)
            i, j = row_of.get(tile_row * side + y), col_of.get(tile_col * side + x)
            if i is not None and j is not None:
                positions.append(crop_tokens + i * stride + j)
                kept_rows.add(i)
    if newline:
        rows = kept_rows if col_of else range(len(row_of))
        positions += [crop_tokens + i * stride + stride - 1 for i in rows]
    return torch.sort(torch.tensor(positions, dtype=torch.long)).values
