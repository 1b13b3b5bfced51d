"""How the attention capture's memory grows with the number of tokens.

Each size runs in a fresh Python process (so no heap left over from another
size is reused): it makes one layer's queries and keys of a ViT shape, then
replays the capture of a selection method exactly as the hooks do (fp32
queries scaled by 1/sqrt(head_dim), ``method.observe`` on every layer the
method asks for, then ``method.select``). Reported per size: the peak resident
memory above what the process held with q and k already allocated, what the
method keeps between layers (``ctx.state``), and what keeping every requested
layer's full attention map would take instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

from .memory import PeakMemory


def capture_peak(method_name: str, patches: int, heads: int, head_dim: int,
                 num_layers: int, feature_layer: int, ratio: float = 0.5) -> Dict[str, float]:
    """Measure in this process (call it in a fresh one: see :func:`measure`)."""
    from ...config import Config
    from ...runtime.methods import create
    from ...runtime.methods.base import CropRequest, QueryKeyView, SelectionContext

    side = int(round(patches ** 0.5))
    if side * side != patches:
        raise ValueError(f"patches={patches} is not a square grid: expected e.g. 576 or 2304")
    config = Config(vision_method=method_name, ratio=ratio)
    method = create(config)
    ctx = SelectionContext([CropRequest(config.budget(patches))], (side, side), 1, num_layers, feature_layer)
    layers = method.attention_layers(num_layers, feature_layer)
    generator = torch.Generator().manual_seed(0)
    q_raw = torch.randn(1, patches + 1, heads * head_dim, generator=generator)
    k_raw = torch.randn(1, patches + 1, heads * head_dim, generator=generator)
    tracker = PeakMemory(torch.device("cpu"))
    before = tracker.reset()
    start = time.perf_counter()
    for layer in layers:
        q = q_raw.view(1, -1, heads, head_dim).transpose(1, 2).float() * head_dim ** -0.5
        k = k_raw.view(1, -1, heads, head_dim).transpose(1, 2).float()
        method.observe(layer, QueryKeyView(q, k), ctx)
        del q, k
    method.select(ctx)
    seconds = time.perf_counter() - start
    memo = sum(t.numel() * t.element_size() for t in ctx.state.values() if torch.is_tensor(t))
    return {
        "method": method_name, "patches": patches, "layers_captured": len(layers),
        "peak_extra_mb": round(tracker.peak_mb() - before, 3),
        "kept_between_layers_kb": round(memo / 1024, 3),
        "full_maps_mb": round(len(layers) * heads * (patches + 1) ** 2 * 4 / 2 ** 20, 3),
        "capture_ms": round(1000 * seconds, 3),
        "memory_kind": tracker.kind,
    }


def measure(method_name: str, patch_counts: List[int], heads: int, head_dim: int,
            num_layers: int, feature_layer: int) -> List[Dict[str, float]]:
    """:func:`capture_peak` for each size, each in its own subprocess."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    rows = []
    for patches in patch_counts:
        code = (
            "import json; from llava_freepruner.tools.bench.capture_memory import capture_peak; "
            f"print(json.dumps(capture_peak({method_name!r}, {patches}, {heads}, {head_dim}, {num_layers}, {feature_layer})))"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"capture memory measurement at {patches} patches failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows
