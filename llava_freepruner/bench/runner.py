"""Methods x ratios through the host's real ``model.generate`` path, with the plugin applied.

For each configuration: apply the plugin, run warm-up calls, reset the peak
memory, run the timed repeats, remove the plugin. Times are medians over the
repeats. An oracle row per ratio feeds the same number of visual tokens with
no selection cost; every method is compared with it.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .. import config as config_module
from ..fitprune import builtin_names
from ..methods import REGISTRY
from . import flops, oracle, swap
from .memory import PeakMemory
from .model import BenchModel, Inputs
from .probe import CLOCKS, Call, Probe, sync

LLM_METHODS = config_module.LLM_METHODS
UNPATCHED = "none"      # upstream as shipped: the plugin is not applied


def known_methods() -> List[str]:
    """Every method a row can run: the registry's vision methods, the LLM-side ones and ``none``."""
    return [UNPATCHED] + sorted(REGISTRY) + list(LLM_METHODS)


def runs_at(method: str, ratio: float) -> bool:
    """``none`` prunes nothing (one row, at ratio 1.0); no FitPrune recipe removes nothing."""
    if method == UNPATCHED:
        return ratio == 1.0
    return not (method == "fitprune" and ratio == 1.0)


def fitprune_recipe(ratio: float) -> str:
    """The official LLaVA-1.5-7B recipe whose FLOPs-reduction label is nearest ``1 - ratio``
    (ties: the smaller reduction); the runtime scales it to other visual-token counts."""
    labels = [int(name.rpartition("@")[2]) for name in builtin_names() if name.startswith("llava-v1.5-7b@")]
    target = 100 * (1.0 - ratio)
    return f"llava-v1.5-7b@{min(labels, key=lambda pct: (abs(pct - target), pct))}"


@dataclass(frozen=True)
class Settings:
    methods: Sequence[str]
    ratios: Sequence[float]
    repeats: int = 3
    warmup: int = 1
    new_tokens: int = 8
    seed: int = 0
    clock: str = "wall"
    keep_going: bool = False    # a failing row is recorded with its error and the others still run
    video_modes: Sequence[str] = ()     # video rows: FREEPRUNER_VIDEO of each (empty: an image model)

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise ValueError(f"--clock {self.clock!r} is not valid: expected one of {', '.join(CLOCKS)}")
        for name in self.methods:
            if name not in known_methods():
                raise ValueError(f"--methods: unknown method {name!r}; expected some of {', '.join(known_methods())}")
        for ratio in self.ratios:
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"--ratios: {ratio} is not valid: expected fractions kept, 0 < r <= 1")
        if self.repeats < 1:
            raise ValueError(f"--repeats {self.repeats} is not valid: expected >= 1")
        if self.warmup < 0:
            raise ValueError(f"--warmup {self.warmup} is not valid: expected >= 0")
        for mode in self.video_modes:
            if mode not in config_module.VIDEO_MODES:
                raise ValueError(f"--video-modes: unknown mode {mode!r}; expected some of {', '.join(config_module.VIDEO_MODES)}")
        if self.new_tokens < 2:
            raise ValueError(f"--new-tokens {self.new_tokens} is not valid: expected >= 2 (one to time the first token, more for decode)")


def plugin_config(method: str, ratio: float, device: str, stats: str, seed: int,
                  video_mode: Optional[str] = None) -> config_module.Config:
    """The plugin configuration of one row; the oracle borrows a vision slot and is installed over it.
    ``video_mode``: FREEPRUNER_VIDEO of a video row (vision methods only: the LLM ones ignore it)."""
    common = dict(stats=stats, device=device, seed=seed)
    if method == "fitprune":        # the ratio picks the recipe, which sets the budget
        return config_module.Config(vision_method=None, llm_method=method, fitprune_recipe=fitprune_recipe(ratio), **common)
    common["ratio"] = ratio
    if method in LLM_METHODS:
        return config_module.Config(vision_method=None, llm_method=method, **common)
    return config_module.Config(vision_method="grid" if method == oracle.NAME else method, video=video_mode, **common)


def generate(bench: BenchModel, inputs: Inputs, new_tokens: int, streamer=None):
    """The host's own ``generate`` on ``inputs``: greedy, exactly ``new_tokens`` tokens (EOS suppressed)."""
    return bench.model.generate(
        **inputs.generate_kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
        use_cache=True, pad_token_id=0, streamer=streamer,
    )


def check_methods(bench: BenchModel, methods: Sequence[str], ratios: Sequence[float]) -> None:
    """Refuse, before any row runs, a method that cannot run on this model: an LLM-side
    method needs a layer past its pruning layer and a decoder its runtime can drive."""
    layers = bench.parts.text_config.num_hidden_layers
    prune_layer = config_module.Config().fastv_layer     # DART's layer is 2 as well
    for name in (m for m in methods if m in LLM_METHODS):
        if layers <= prune_layer:
            raise ValueError(f"{name} prunes at LLM layer {prune_layer}, but the model has {layers} decoder "
                             f"layers: build at least {prune_layer + 1} (--llm-layers)")
        _check_llm_runtime(bench, name, min(ratios))


def _check_llm_runtime(bench: BenchModel, method: str, ratio: float) -> None:
    """Attach the decoder-side runtime once and take it off again: a decoder it cannot
    drive is refused here, by name, instead of failing in the middle of the rows."""
    from .. import llm as llm_runtime
    from ..session import llm_policy

    decoder = bench.parts.decoder
    policy = llm_policy(plugin_config(method, ratio, bench.device.type, None, 0))
    try:
        llm_runtime.attach(decoder, policy)
    except (TypeError, AttributeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{method} cannot run on --backend {bench.backend}: the decoder-side pruning runtime does not "
            f"drive this {type(decoder).__name__} ({type(err).__name__}: {err})"
        ) from None
    finally:
        llm_runtime.detach(decoder)


class StatsTail:
    """The records the plugin appended to its stats file since the last read."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def new_records(self) -> List[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


class Bench:
    def __init__(self, bench: BenchModel, inputs: Inputs, settings: Settings, out_dir: str, log=None):
        self.bench = bench
        self.inputs = inputs
        self.settings = settings
        self.stats_path = os.path.join(out_dir, "plugin_stats.jsonl")
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.memory = PeakMemory(bench.device)
        if settings.clock == "thread" and (bench.device.type != "cpu" or torch.get_num_threads() != 1):
            raise ValueError("--clock thread measures one CPU thread: use it with --device cpu --threads 1")
        self.clock = CLOCKS[settings.clock]
        parts = bench.parts
        self.decoder = flops.DecoderShape.from_config(parts.text_config)
        self.encoder = flops.EncoderShape.from_config(parts.vision_config)
        self.num_patches = parts.num_patches
        # what one budget counts: a crop's patches, or a video frame's tokens as the LLM sees them
        self.unit_tokens = inputs.frame_tokens or self.num_patches
        self.projector = [(m.in_features, m.out_features) for m in parts.projector.modules()
                          if isinstance(m, torch.nn.Linear)]
        self.records: List[dict] = []
        self.check()

    # --- one generate call --------------------------------------------------------

    def generate_once(self, probe: Probe, stats: StatsTail, timer: Optional[swap.TimedMethod]) -> Dict[str, float]:
        n = self.settings.new_tokens
        with probe.call() as scope, torch.inference_mode():
            generate(self.bench, self.inputs, n, scope.streamer)
        call: Call = scope.call
        if len(call.token_times) != n or call.prefill_s is None:
            raise RuntimeError(f"generate produced {len(call.token_times)} of {n} tokens or no prefill was seen")
        records = stats.new_records()
        return {
            "vision_ms": 1000 * call.vision_s,
            "select_ms": 1000 * timer.take_seconds() if timer else None,
            # Only images the plugin selected from carry a selection time.
            "plugin_select_ms": sum(r["select_ms"] for r in records if "select_ms" in r) if records else None,
            "llm_prefill_ms": 1000 * call.prefill_s,
            "ttft_ms": 1000 * (call.token_times[0] - scope.start),
            "decode_tok_s": (n - 1) * self.inputs.input_ids.shape[0] / (call.token_times[-1] - call.token_times[0]),
            "layer_tokens": call.layer_tokens,
            "head_tokens": call.head_tokens,
        }

    # --- one configuration --------------------------------------------------------

    def run_config(self, method: str, ratio: float, position: str, video_mode: Optional[str] = None) -> dict:
        import llava_freepruner
        from .. import backends

        unpatched = method == UNPATCHED
        config = None if unpatched else plugin_config(method, ratio, self.bench.device.type, self.stats_path,
                                                      self.settings.seed, video_mode)
        if config is not None:
            llava_freepruner.apply(config)
        timer = None
        if config is not None and config.vision_method is not None:
            chosen = oracle.FirstK() if method == oracle.NAME else backends.vision_method()
            timer = swap.TimedMethod(chosen, self.clock, lambda: sync(self.bench.device))
            backends.set_vision_method(timer)
        probe = Probe(self.bench.parts, self.bench.device, self.clock)
        stats = StatsTail(self.stats_path)
        try:
            total = self.settings.warmup + self.settings.repeats
            calls = []
            for i in range(total):
                if i == self.settings.warmup:
                    in_use = self.memory.reset()
                result = self.generate_once(probe, stats, timer)
                phase = "warm-up" if i < self.settings.warmup else f"repeat {i - self.settings.warmup + 1}/{self.settings.repeats}"
                self.log(f"  {position} {method:10} ratio {ratio:<5} {phase:12} ttft {result['ttft_ms']:9.1f} ms  "
                         f"prefill {result['llm_prefill_ms']:9.1f} ms  visual tokens {result['layer_tokens'][0] - self.inputs.text_tokens}")
                if i >= self.settings.warmup:
                    calls.append(result)
            peak = self.memory.peak_mb()
        finally:
            probe.remove()
            if config is not None:
                llava_freepruner.remove()
        budget = self.unit_tokens if unpatched else config.budget(self.unit_tokens)
        record = self.record(method, ratio, budget, calls, peak, in_use)
        if self.inputs.frames:
            record.update(frames=self.inputs.frames, video_mode=video_mode)
        if config is not None and config.fitprune_recipe:
            record["recipe"] = config.fitprune_recipe
        return record

    def record(self, method: str, ratio: float, budget: int, calls: List[dict], peak: float, in_use: float) -> dict:
        layer_tokens = calls[-1]["layer_tokens"]
        if any(c["layer_tokens"] != layer_tokens for c in calls):
            raise RuntimeError(f"{method} at ratio {ratio}: the LLM saw different lengths across repeats")
        text = self.inputs.text_tokens
        batch = self.inputs.input_ids.shape[0]
        visual = layer_tokens[0] - text
        if method in LLM_METHODS and layer_tokens[-1] == layer_tokens[0] and budget < self.unit_tokens:
            raise RuntimeError(
                f"{method} did not drop any visual token inside the LLM (every layer saw {layer_tokens[0]} positions): "
                "LLM-side pruning is not available in this build of llava_freepruner"
            )
        llm_flops = batch * flops.llm_prefill_flops(self.decoder, layer_tokens, calls[-1]["head_tokens"])
        vision_flops = flops.vision_flops(self.encoder, self.num_patches, self.inputs.crops)
        projector_flops = flops.projector_flops(self.projector, batch * visual)

        def median(key):
            values = [c[key] for c in calls if c[key] is not None]
            return round(statistics.median(values), 3) if values else None

        return {
            "method": method, "ratio": ratio, "budget": budget,
            "visual_tokens": visual,
            "mean_layer_visual_tokens": round(sum(layer_tokens) / len(layer_tokens) - text, 2),
            "llm_input_tokens": layer_tokens[0],
            "layer_tokens": layer_tokens,
            "vision_ms": median("vision_ms"), "select_ms": median("select_ms"),
            "plugin_select_ms": median("plugin_select_ms"), "clock": self.settings.clock,
            "llm_prefill_ms": median("llm_prefill_ms"), "ttft_ms": median("ttft_ms"),
            "decode_tok_s": median("decode_tok_s"),
            "peak_mem_mb": round(peak, 1), "mem_at_start_mb": round(in_use, 1), "peak_mem_kind": self.memory.kind,
            "prefill_flops": llm_flops + vision_flops + projector_flops,
            "llm_prefill_flops": llm_flops, "vision_flops": vision_flops, "projector_flops": projector_flops,
            "repeats": len(calls),
        }

    # --- everything ---------------------------------------------------------------

    def check(self) -> None:
        """Refuse, before any timing, a row that cannot run on this model."""
        check_methods(self.bench, self.settings.methods, self.settings.ratios)

    def rows(self) -> List[tuple]:
        """(method, ratio, video mode) of every row; a video mode applies to the vision side only,
        so the unpatched model and the LLM methods run once per ratio (mode None)."""
        methods = [oracle.NAME, *self.settings.methods]
        if not self.settings.video_modes:
            return [(m, r, None) for r in self.settings.ratios for m in methods if runs_at(m, r)]
        rows = []
        for r in self.settings.ratios:
            for mode in self.settings.video_modes:
                rows += [(m, r, mode) for m in methods if runs_at(m, r) and m not in (UNPATCHED, *LLM_METHODS)]
            rows += [(m, r, None) for m in methods if runs_at(m, r) and m in (UNPATCHED, *LLM_METHODS)]
        return rows

    def run(self) -> List[dict]:
        rows = self.rows()
        from .. import session  # noqa: F401  (its import sets the logger up; quiet it after)

        plugin_log = logging.getLogger("llava_freepruner")
        level = plugin_log.level
        plugin_log.setLevel(logging.WARNING)     # the bench prints its own progress
        self.records = []      # what finished, also when a later row fails
        try:
            for i, (method, ratio, mode) in enumerate(rows, 1):
                started = time.perf_counter()
                try:
                    self.records.append(self.run_config(method, ratio, f"[{i}/{len(rows)}]", mode))
                except Exception as err:
                    if not self.settings.keep_going:
                        raise
                    self.records.append({"method": method, "ratio": ratio, "error": f"{type(err).__name__}: {err}"})
                    self.log(f"  [{i}/{len(rows)}] {method} ratio {ratio} FAILED: {self.records[-1]['error']}")
                    continue
                self.log(f"  [{i}/{len(rows)}] {method} ratio {ratio} done in {time.perf_counter() - started:.1f} s")
        finally:
            plugin_log.setLevel(level)
        return compare(self.records)


def compare(records: List[dict]) -> List[dict]:
    """Add each row's distance to the oracle and its speed-up over its own ratio 1.0 (failed rows: nothing)."""
    done = [r for r in records if "error" not in r]
    # video rows: an oracle per ratio and mode (temporal mode keeps fewer tokens); the rows
    # without a mode (LLM methods, unpatched) are compared with the first mode's oracle
    modes = list(dict.fromkeys(r.get("video_mode") for r in done))
    oracle_rows = {(r["ratio"], r.get("video_mode")): r for r in done if r["method"] == oracle.NAME}
    full = {(r["method"], r.get("video_mode")): r for r in done if r["ratio"] == 1.0}
    for r in done:
        ref = oracle_rows.get((r["ratio"], r.get("video_mode") or modes[0]))
        r["efficiency"] = _ratio(ref and ref["ttft_ms"], r["ttft_ms"])
        r["prefill_efficiency"] = _ratio(ref and ref["llm_prefill_ms"], r["llm_prefill_ms"])
        r["select_pct_of_ttft"] = _pct(r["select_ms"], r["ttft_ms"])
        r["select_pct_of_vision"] = _pct(r["select_ms"], ref and ref["vision_ms"])
        base = full.get((r["method"], r.get("video_mode")))
        r["prefill_speedup_vs_full"] = _ratio(base and base["llm_prefill_ms"], r["llm_prefill_ms"])
    return records


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 4) if a and b else None


def _pct(part: Optional[float], whole: Optional[float]) -> Optional[float]:
    return round(100 * part / whole, 3) if part is not None and whole else None
