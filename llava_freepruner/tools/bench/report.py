"""results.json, a markdown table and a plot of time against visual tokens."""

from __future__ import annotations

import json
import os
from typing import List, Optional

from . import oracle
from .probe import CUDA_EVENTS

COLUMNS = [
    ("method", "method", "{}"),
    ("video_mode", "mode", "{}"),
    ("frames", "frames", "{}"),
    ("ratio", "ratio", "{}"),
    ("batch_size", "batch", "{}"),
    ("visual_tokens", "visual tokens", "{}"),
    ("vision_ms", "vision ms", "{:.1f}"),
    ("selection_ms", "selection ms", "{:.2f}"),
    ("select_ms", "select ms", "{:.2f}"),
    ("llm_prefill_ms", "LLM prefill ms", "{:.1f}"),
    ("rest_ms", "rest ms", "{:.1f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("decode_tok_s", "decode tok/s", "{:.2f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
    ("prefill_flops", "prefill GFLOPs", "{:.1f}"),
    ("efficiency", "efficiency (oracle TTFT / TTFT)", "{:.3f}"),
    ("select_pct_of_ttft", "select % TTFT", "{:.2f}"),
    ("select_pct_of_vision", "select % vision", "{:.2f}"),
    ("prefill_speedup_vs_full", "prefill speed-up vs ratio 1", "{:.2f}"),
    ("quant", "weights", "{}"),
    ("weights_mb", "weights MB", "{:.1f}"),
]


def _cell(key: str, fmt: str, record: dict) -> str:
    """A cell; a time with quartiles also shows its interquartile range in brackets."""
    value = record.get(key)
    if value is None:
        return "n/a"
    if key == "prefill_flops":
        value = value / 1e9
    spread = record.get("spread", {}).get(key)
    return fmt.format(value) + (f" [{fmt.format(spread['iqr'])}]" if spread and key.endswith("_ms") else "")


def table(records: List[dict]) -> List[str]:
    """The rows as a markdown table, one line each (failed rows: n/a cells); the video
    columns only when some row is a video row."""
    video = any("frames" in r for r in records)
    columns = [c for c in COLUMNS if video or c[0] not in ("video_mode", "frames")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(k, f, r) for k, _, f in columns) + " |" for r in records]


def _rounds(meta: dict) -> str:
    """How the times were taken: older results (one batch size, rows one after another) say less."""
    if "batch_sizes" not in meta:
        return (f"batch {meta['batch_size']}, {meta['text_tokens']} text tokens{_clip(meta)}, {meta['new_tokens']} new tokens, "
                f"medians of {meta['repeats']} repeats after {meta['warmup']} warm-up, {meta['clock']} clock.")
    return (f"batch {', '.join(map(str, meta['batch_sizes']))}, {meta['text_tokens']} text tokens{_clip(meta)}, "
            f"{meta['new_tokens']} new tokens, {meta['warmup']} warm-up calls per row, then medians [interquartile range] "
            f"of {meta['repeats']} repeats in shuffled round-robin rounds over the rows, {meta['clock']} clock.")


def markdown(meta: dict, records: List[dict], capture: Optional[List[dict]] = None) -> str:
    lines = [
        f"Model: {meta['model']} ({meta['weights']}, {meta.get('backend', 'upstream')} backend), "
        f"LLM layers {meta['llm_layers']}, vision layers "
        f"{meta['vision_layers']}, {meta['dtype']} on {meta['device_name']}, {meta['threads']} threads, "
        + _rounds(meta),
        "",
        f"Command: `{meta['command']}`",
        "",
        *table(records),
    ]
    failed = [r for r in records if "error" in r]
    if failed:
        lines += ["", "Failed rows (every cell n/a): " + "; ".join(f"{r['method']} at ratio {r['ratio']}: {r['error']}"
                                                               for r in failed) + "."]
    done = [r for r in records if "error" not in r]
    warnings = meta.get("warnings", []) + [f"{r['method']} ratio {r['ratio']} batch {r['batch_size']}: {w}"
                                           for r in done for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "Warnings:", "", *(f"- {w}" for w in warnings)]
    select = ("on CUDA, the method's vision and selection stages less the oracle's" if meta["clock"] == CUDA_EVENTS
              else "time in the method's observe (attention reduction in the capture hooks) and select")
    lines += [
        "",
        f"Peak memory: {done[0]['peak_mem_kind'] if done else ''}. vision: the tower, capture hooks included. "
        "selection: from the tower's end to the LLM prefill's start (select, projector, merge). rest: the time to "
        f"first token less the three stages. select ms: {select}. select % vision: of the oracle's tower time "
        "(no hooks). TTFT: from the generate call to the first token on the host.",
    ]
    if capture:
        lines += [
            "",
            "Capture memory (one crop, queries and keys of the tower's shape, fresh process per size):",
            "",
            "| method | patches | layers captured | peak extra MB | kept between layers KB | full maps would be MB | capture ms (wall) |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in capture:
            lines.append(f"| {c['method']} | {c['patches']} | {c['layers_captured']} | {c['peak_extra_mb']:.1f} | "
                         f"{c['kept_between_layers_kb']:.1f} | {c['full_maps_mb']:.1f} | {c['capture_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def _clip(meta: dict) -> str:
    frames = meta.get("video_frames")
    return f", a {frames}-frame synthetic clip" if frames else ""


def plot(records: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "ttft_ms", "time to first token"), (axes[1], "llm_prefill_ms", "LLM prefill")):
        for line in dict.fromkeys(_line(r) for r in records):
            rows = sorted((r for r in records if _line(r) == line), key=lambda r: r["mean_layer_visual_tokens"])
            style = dict(color="black", linestyle="--") if line.startswith(oracle.NAME) else {}
            ax.plot([r["mean_layer_visual_tokens"] for r in rows], [r[key] for r in rows], marker="o", label=line, **style)
        ax.set_xlabel("visual tokens (mean over LLM layers)")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _line(record: dict) -> str:
    """A plotted line: the method, its video mode and its weights when quantized."""
    quant = record.get("quant", "none")
    name = record["method"] + (f" {record['video_mode']}" if record.get("video_mode") else "")
    name += f" batch {record['batch_size']}" if record.get("batch_size", 1) != 1 else ""
    return name if quant == "none" else f"{name} ({quant})"


def write(out_dir: str, meta: dict, records: List[dict], capture: Optional[List[dict]] = None) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, name) for name in ("results.json", "results.md", "time_vs_tokens.png")]
    with open(paths[0], "w") as handle:
        json.dump({"meta": meta, "records": records, "capture_memory": capture or []}, handle, indent=2)
    with open(paths[1], "w") as handle:
        handle.write(markdown(meta, records, capture))
    plot(records, paths[2])
    return paths
