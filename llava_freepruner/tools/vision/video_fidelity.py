"""Video fidelity: every method x mode x ratio on real clips, per-frame proxies.

The frames of a clip go through the tower as one batch, each frame a crop of its
own; ``temporal`` mode narrows each frame's candidates to its non-redundant
patches (cosine similarity of feature-layer patch features with the same patch
of the previous frame >= tau) before the selection, as the transformers backend
does with the features the LLM sees. Proxies per clip, averaged over frames:

- saliency kept: share of each frame's saliency mass on its kept patches;
- coverage: mean over dropped patches of the best cosine similarity to a patch
  kept in the same or an earlier frame (what the LLM has seen by then);
- redundant kept: share of kept patches that are temporally redundant at tau
  (frame mode spends budget on them, temporal mode does not).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F

from ...runtime import methods, video
from ...config import Config
from ...runtime.methods.base import CropRequest, Selection
from ...runtime.tower import run_tower
from . import proxies
from .towers import Vision, check_methods

METRICS = ("saliency", "coverage", "redundant_kept")


@dataclass
class ClipSelection:
    selections: List[Selection]     # one per frame
    redundant: torch.Tensor         # (frames, patches) bool at tau
    patches: torch.Tensor           # (frames, patches, dim) feature-layer patch features


@torch.no_grad()
def select_clip(vision: Vision, pixels: torch.Tensor, name: str, ratio: float, mode: str,
                tau: float, base: Optional[Config] = None) -> ClipSelection:
    """Select on every frame of ``pixels`` (frames, 3, H, W) with method ``name`` in ``mode``."""
    check_methods([name])
    config = (base or Config()).replace(vision_method=name, llm_method=None, ratio=ratio, tokens=None,
                                        video=mode, video_tau=tau if mode == "temporal" else None)
    layout = video.FrameLayout(pixels.shape[0], vision.grid)
    requests = [CropRequest(video.frame_budget(config, layout))] * layout.frames
    found = {}

    def narrow(features):
        found["patches"] = features[:, -layout.num_cells:]
        found["redundant"] = video.temporal_redundancy(found["patches"], tau)
        return video.novel_requests(requests, found["redundant"]) if mode == "temporal" else requests

    run = run_tower(vision.tower, pixels, requests, methods.create(config), narrow=narrow)
    return ClipSelection(run.selections, found["redundant"], found["patches"])


def clip_proxies(clip: ClipSelection, saliency: Optional[torch.Tensor]) -> dict:
    """The proxies of one clip's selection; ``saliency``: (frames, patches) or None."""
    unit = F.normalize(clip.patches.float(), dim=-1)
    seen, coverage, kept_redundant, kept_total, saliency_kept = [], [], 0, 0, []
    for frame, selection in enumerate(clip.selections):
        kept = selection.indices.cpu()
        seen.append(unit[frame][kept])
        dropped = torch.ones(unit.shape[1], dtype=torch.bool)
        dropped[kept] = False
        pool = torch.cat(seen)
        if dropped.any() and pool.numel():
            coverage.append(float((unit[frame][dropped] @ pool.T).max(dim=1).values.mean()))
        elif dropped.any():
            coverage.append(0.0)
        else:
            coverage.append(1.0)
        kept_redundant += int(clip.redundant[frame][kept].sum())
        kept_total += kept.numel()
        if saliency is not None:
            saliency_kept.append(proxies.saliency_kept(saliency[frame], kept))
    return {"kept": kept_total, "saliency": sum(saliency_kept) / len(saliency_kept) if saliency_kept else None,
            "coverage": sum(coverage) / len(coverage), "redundant_kept": kept_redundant / max(kept_total, 1)}


def run(vision: Vision, clips: Dict[str, list], method_names: Sequence[str], ratios: Sequence[float],
        modes: Sequence[str], tau: float, base: Optional[Config] = None) -> List[dict]:
    """Rows averaged over ``clips`` (name -> frames as PIL images)."""
    records = defaultdict(list)
    for frames in clips.values():
        pixels = torch.stack([vision.prepare(frame)[1] for frame in frames])
        with torch.no_grad():
            vision.tower(pixels)
        maps = vision.saliency_map()
        saliency = None if maps is None else torch.stack([proxies.patch_saliency(m, vision.grid) for m in maps])
        for name in method_names:
            for mode in modes:
                for ratio in ratios:
                    clip = select_clip(vision, pixels, name, ratio, mode, tau, base)
                    records[(name, mode, ratio)].append(clip_proxies(clip, saliency))
    rows = []
    for (name, mode, ratio), group in records.items():
        row = {"method": name, "mode": mode, "ratio": ratio, "clips": len(group),
               "kept": sum(r["kept"] for r in group) / len(group)}
        for metric in METRICS:
            values = [r[metric] for r in group]
            row[metric] = None if None in values else sum(values) / len(values)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict], frames: int, patches: int) -> str:
    lines = [f"| method | mode | ratio | kept of {frames} x {patches} | saliency kept ↑ | coverage ↑ | redundant kept ↓ |",
             "|---|---|---:|---:|---:|---:|---:|"]
    cell = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['method']} | {r['mode']} | {r['ratio']:g} | {r['kept']:.0f} | "
                     + " | ".join(cell(r[m]) for m in METRICS) + " |")
    return "\n".join(lines)
