"""Methods x ratios x batch sizes through the host's real ``model.generate`` path, with the plugin applied.

Every row first runs its warm-up calls; then the timed repeats run in rounds,
each round every row once, in an order shuffled per round (seeded), so that
drift (clocks, temperature, other processes) hits every method alike. Each call
applies its row's plugin configuration and removes it after, outside the timed
regions (the record keeps that host time as ``apply_ms``). Times are medians
with quartiles over the repeats. An oracle row per ratio and batch size feeds
the same number of visual tokens with no selection cost; every method is
compared with it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ... import config as config_module
from ...runtime.fitprune import builtin_names
from ...runtime.methods import REGISTRY
from . import flops, oracle, swap
from .memory import PeakMemory
from .model import BenchModel, Inputs
from .probe import CLOCKS, CUDA_EVENTS, Call, Probe

LLM_METHODS = config_module.LLM_METHODS
UNPATCHED = "none"      # upstream as shipped: the plugin is not applied

# warm-up calls and timed repeats per row: the defaults per device, and the least a CUDA run should use
ROUNDS = {"cuda": (3, 10), "cpu": (1, 3)}
# stage times of a call (ms): their sum, with the rest, is the time to first token
STAGES = ("vision_ms", "selection_ms", "llm_prefill_ms", "rest_ms", "ttft_ms")
NOISE = 0.10        # a row's LLM prefill this far from the oracle's at the same tokens is flagged


def resolve_rounds(device: str, warmup: Optional[int], repeats: Optional[int]) -> Tuple[int, int, List[str]]:
    """(warm-up calls, repeats, warnings): the device's defaults where not given; on CUDA, fewer
    than ``ROUNDS["cuda"]`` runs but is warned about (its medians cannot rank methods)."""
    default_warmup, default_repeats = ROUNDS["cuda" if device == "cuda" else "cpu"]
    warmup = default_warmup if warmup is None else warmup
    repeats = default_repeats if repeats is None else repeats
    warnings = []
    if device == "cuda":
        least_warmup, least_repeats = ROUNDS["cuda"]
        for flag, value, least in (("--warmup", warmup, least_warmup), ("--repeats", repeats, least_repeats)):
            if value < least:
                warnings.append(f"{flag} {value} is below {least}, the least for timings on CUDA that rank methods: "
                                f"treat the medians as indicative")
    return warmup, repeats, warnings


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(first quartile, median, third quartile), inclusive method (one value: that value thrice)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def schedule(rows: int, warmup: int, repeats: int, seed: int) -> List[Tuple[int, Optional[int]]]:
    """The order of the calls: (row index, round), round None for a warm-up. Every row runs
    its warm-ups first (in row order); then ``repeats`` rounds, each every row once in an
    order shuffled per round by a generator seeded with ``seed``."""
    order: List[Tuple[int, Optional[int]]] = [(i, None) for i in range(rows) for _ in range(warmup)]
    rng = random.Random(seed)
    for round_ in range(repeats):
        indices = list(range(rows))
        rng.shuffle(indices)
        order += [(i, round_) for i in indices]
    return order


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
    repeats: int = ROUNDS["cpu"][1]
    warmup: int = ROUNDS["cpu"][0]
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
    from ...runtime import llm as llm_runtime
    from ...runtime.session import llm_policy

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


@dataclass
class Row:
    """One configuration and what its calls measured."""

    method: str
    ratio: float
    video_mode: Optional[str]
    batch: int
    config: Optional[config_module.Config]      # None: the unpatched model
    calls: List[dict] = field(default_factory=list)
    apply_ms: List[float] = field(default_factory=list)    # host time to apply and remove, per call
    peak_mb: float = 0.0
    in_use_mb: Optional[float] = None
    error: Optional[str] = None

    @property
    def label(self) -> str:
        mode = f" {self.video_mode}" if self.video_mode else ""
        return f"{self.method}{mode} ratio {self.ratio} batch {self.batch}"


class Bench:
    """``inputs``: the prompts of each batch size, by batch size."""

    def __init__(self, bench: BenchModel, inputs: Dict[int, Inputs], settings: Settings, out_dir: str, log=None):
        self.bench = bench
        self.inputs = inputs
        self.settings = settings
        self.stats_path = os.path.join(out_dir, "plugin_stats.jsonl")
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.memory = PeakMemory(bench.device)
        if settings.clock == "thread" and (bench.device.type != "cpu" or torch.get_num_threads() != 1):
            raise ValueError("--clock thread measures one CPU thread: use it with --device cpu --threads 1")
        self.clock = CLOCKS[settings.clock]
        self.clock_name = CUDA_EVENTS if bench.device.type == "cuda" else settings.clock
        parts = bench.parts
        self.decoder = flops.DecoderShape.from_config(parts.text_config)
        self.encoder = flops.EncoderShape.from_config(parts.vision_config)
        self.num_patches = parts.num_patches
        first = next(iter(inputs.values()))
        # what one budget counts: a crop's patches (Qwen-VL: merged tokens), or a video frame's tokens
        # as the LLM sees them
        self.unit_tokens = first.frame_tokens or parts.tokens_per_crop
        self.projects_in_tower = parts.projects_in_tower
        self.projector = [(m.in_features, m.out_features) for m in parts.projector.modules()
                          if isinstance(m, torch.nn.Linear)]
        self.stats = StatsTail(self.stats_path)
        self.records: List[dict] = []
        self.check()

    # --- one generate call --------------------------------------------------------

    @contextmanager
    def applied(self, row: Row) -> Iterator[Tuple[Probe, Optional[swap.TimedMethod]]]:
        """The row's plugin configuration, the oracle or the CPU select timer, and the probe,
        for one call; the host time to put them in and take them out goes to ``row.apply_ms``."""
        import llava_freepruner
        from ...runtime import backends

        started = time.perf_counter()
        if row.config is not None:
            llava_freepruner.apply(row.config)
        timer = None
        if row.config is not None and row.config.vision_method is not None:
            chosen = oracle.FirstK() if row.method == oracle.NAME else backends.vision_method()
            if self.bench.device.type != "cuda":     # on CUDA the stage events time selection
                chosen = timer = swap.TimedMethod(chosen, self.clock)
            backends.set_vision_method(chosen)
        probe = Probe(self.bench.parts, self.bench.device, self.clock)
        setup = time.perf_counter() - started
        try:
            yield probe, timer
        finally:
            started = time.perf_counter()
            probe.remove()
            if row.config is not None:
                llava_freepruner.remove()
            row.apply_ms.append(1000 * (setup + time.perf_counter() - started))

    def generate_once(self, row: Row, timed: bool) -> dict:
        n = self.settings.new_tokens
        inputs = self.inputs[row.batch]
        with self.applied(row) as (probe, timer):
            in_use = self.memory.reset() if timed else None
            with probe.call() as scope, torch.inference_mode():
                generate(self.bench, inputs, n, scope.streamer)
            if timed:
                row.peak_mb = max(row.peak_mb, self.memory.peak_mb())
                row.in_use_mb = in_use if row.in_use_mb is None else row.in_use_mb
        call: Call = scope.call
        if len(call.token_times) != n or call.prefill_s is None:
            raise RuntimeError(f"generate produced {len(call.token_times)} of {n} tokens or no prefill was seen")
        records = self.stats.new_records()
        stages = {"vision_ms": 1000 * call.vision_s,
                  "selection_ms": 1000 * call.select_s if call.select_s is not None else 0.0,
                  "llm_prefill_ms": 1000 * call.prefill_s, "ttft_ms": 1000 * call.ttft_s}
        stages["rest_ms"] = stages["ttft_ms"] - stages["vision_ms"] - stages["selection_ms"] - stages["llm_prefill_ms"]
        return {
            **stages,
            "select_ms": 1000 * timer.take_seconds() if timer else None,
            # Only images the plugin selected from carry a selection time.
            "plugin_select_ms": sum(r["select_ms"] for r in records if "select_ms" in r) if records else None,
            "decode_tok_s": (n - 1) * inputs.input_ids.shape[0] / (call.token_times[-1] - call.token_times[0]),
            "layer_tokens": call.layer_tokens,
            "head_tokens": call.head_tokens,
        }

    # --- one configuration --------------------------------------------------------

    def make_row(self, method: str, ratio: float, video_mode: Optional[str], batch: int) -> Row:
        config = None if method == UNPATCHED else plugin_config(method, ratio, self.bench.device.type, self.stats_path,
                                                                self.settings.seed, video_mode)
        return Row(method, ratio, video_mode, batch, config)

    def record(self, row: Row) -> dict:
        if row.error is not None:
            return {"method": row.method, "ratio": row.ratio, "batch_size": row.batch, "error": row.error}
        calls = row.calls
        inputs = self.inputs[row.batch]
        budget = self.unit_tokens if row.config is None else row.config.budget(self.unit_tokens)
        layer_tokens = calls[-1]["layer_tokens"]
        if any(c["layer_tokens"] != layer_tokens for c in calls):
            raise RuntimeError(f"{row.label}: the LLM saw different lengths across repeats")
        text = inputs.text_tokens
        visual = layer_tokens[0] - text
        if row.method in LLM_METHODS and layer_tokens[-1] == layer_tokens[0] and budget < self.unit_tokens:
            raise RuntimeError(
                f"{row.method} did not drop any visual token inside the LLM (every layer saw {layer_tokens[0]} positions): "
                "LLM-side pruning is not available in this build of llava_freepruner"
            )
        llm_flops = row.batch * flops.llm_prefill_flops(self.decoder, layer_tokens, calls[-1]["head_tokens"])
        vision_flops = flops.vision_flops(self.encoder, self.num_patches, inputs.crops)
        # Qwen-VL's merger runs in the tower, on every merged token; LLaVA's projector on the kept ones
        projected = inputs.crops * self.unit_tokens if self.projects_in_tower else row.batch * visual
        projector_flops = flops.projector_flops(self.projector, projected)
        record = {
            "method": row.method, "ratio": row.ratio, "batch_size": row.batch, "budget": budget,
            "visual_tokens": visual,
            "mean_layer_visual_tokens": round(sum(layer_tokens) / len(layer_tokens) - text, 2),
            "llm_input_tokens": layer_tokens[0],
            "layer_tokens": layer_tokens,
            "clock": self.clock_name,
            "peak_mem_mb": round(row.peak_mb, 1), "mem_at_start_mb": round(row.in_use_mb, 1),
            "peak_mem_kind": self.memory.kind,
            "prefill_flops": llm_flops + vision_flops + projector_flops,
            "llm_prefill_flops": llm_flops, "vision_flops": vision_flops, "projector_flops": projector_flops,
            "repeats": len(calls), "warmup": self.settings.warmup,
            "apply_ms": round(statistics.median(row.apply_ms), 3),
            "spread": {},
        }
        for key in (*STAGES, "select_ms", "plugin_select_ms", "decode_tok_s"):
            values = [c[key] for c in calls if c[key] is not None]
            if not values:
                record[key] = None
                continue
            q1, median, q3 = (round(v, 3) for v in quartiles(values))
            record[key] = median
            record["spread"][key] = {"q1": q1, "q3": q3, "iqr": round(q3 - q1, 3)}
        if inputs.frames:
            record.update(frames=inputs.frames, video_mode=row.video_mode)
        if row.config is not None and row.config.fitprune_recipe:
            record["recipe"] = row.config.fitprune_recipe
        return record

    # --- everything ---------------------------------------------------------------

    def check(self) -> None:
        """Refuse, before any timing, a row that cannot run on this model."""
        check_methods(self.bench, self.settings.methods, self.settings.ratios)

    def rows(self) -> List[Row]:
        """Every row, per batch size: (method, ratio, video mode); a video mode applies to the
        vision side only, so the unpatched model and the LLM methods run once per ratio (mode None)."""
        methods = [oracle.NAME, *self.settings.methods]
        keys = []
        for r in self.settings.ratios:
            if not self.settings.video_modes:
                keys += [(m, r, None) for m in methods if runs_at(m, r)]
                continue
            for mode in self.settings.video_modes:
                keys += [(m, r, mode) for m in methods if runs_at(m, r) and m not in (UNPATCHED, *LLM_METHODS)]
            keys += [(m, r, None) for m in methods if runs_at(m, r) and m in (UNPATCHED, *LLM_METHODS)]
        return [self.make_row(m, r, mode, batch) for batch in self.inputs for m, r, mode in keys]

    def run_call(self, row: Row, round_: Optional[int], position: str) -> None:
        """One call of ``row``: a warm-up (``round_`` None) or the repeat of a round; a failure
        marks the row (with --keep-going) and it runs no more."""
        phase = "warm-up" if round_ is None else f"repeat {round_ + 1}/{self.settings.repeats}"
        try:
            result = self.generate_once(row, timed=round_ is not None)
        except Exception as err:
            if not self.settings.keep_going:
                raise
            row.error = f"{type(err).__name__}: {err}"
            self.log(f"  {position} {row.label} FAILED: {row.error}")
            return
        if round_ is not None:
            row.calls.append(result)
        self.log(f"  {position} {row.label:34} {phase:12} ttft {result['ttft_ms']:9.1f} ms  "
                 f"prefill {result['llm_prefill_ms']:9.1f} ms  "
                 f"visual tokens {result['layer_tokens'][0] - self.inputs[row.batch].text_tokens}")

    def finished(self, row: Row) -> dict:
        """The row's record; with --keep-going a row whose calls disagree is recorded with its error."""
        try:
            return self.record(row)
        except RuntimeError as err:
            if not self.settings.keep_going:
                raise
            row.error = f"{type(err).__name__}: {err}"
            return self.record(row)

    def run(self) -> List[dict]:
        rows = self.rows()
        from ...runtime import session  # noqa: F401  (its import sets the logger up; quiet it after)

        plugin_log = logging.getLogger("llava_freepruner")
        level = plugin_log.level
        plugin_log.setLevel(logging.WARNING)     # the bench prints its own progress
        self.records = []      # what finished, also when a later row fails
        order = schedule(len(rows), self.settings.warmup, self.settings.repeats, self.settings.seed)
        try:
            for i, (index, round_) in enumerate(order, 1):
                if rows[index].error is None:
                    self.run_call(rows[index], round_, f"[{i}/{len(order)}]")
                if round_ is not None and all(row.error or len(row.calls) > round_ for row in rows):
                    # a round is over: keep what finished, also for an interrupted run
                    self.records = [self.finished(row) for row in rows if row.error or row.calls]
        finally:
            plugin_log.setLevel(level)
        self.records = compare([self.finished(row) for row in rows])
        for r in self.records:
            for warning in r.get("warnings", []):
                self.log(f"bench: warning: {r['method']} ratio {r['ratio']} batch {r['batch_size']}: {warning}")
        return self.records


def compare(records: List[dict]) -> List[dict]:
    """Add each row's distance to the oracle of its ratio and batch size, its speed-up over its
    own ratio 1.0, and a warning where its LLM prefill strays from the oracle's at the same
    tokens (failed rows: nothing). On CUDA a vision method's ``select_ms`` is its tower and
    selection stages over the oracle's (the stage events hold no separate select timer)."""
    done = [r for r in records if "error" not in r]
    # video rows: an oracle per ratio and mode (temporal mode keeps fewer tokens); the rows
    # without a mode (LLM methods, unpatched) are compared with the first mode's oracle
    modes = list(dict.fromkeys(r.get("video_mode") for r in done))
    oracle_rows = {(r["ratio"], r.get("video_mode"), r["batch_size"]): r for r in done if r["method"] == oracle.NAME}
    full = {(r["method"], r.get("video_mode"), r["batch_size"]): r for r in done if r["ratio"] == 1.0}
    for r in done:
        ref = oracle_rows.get((r["ratio"], r.get("video_mode") or modes[0], r["batch_size"]))
        if r["clock"] == CUDA_EVENTS and r["select_ms"] is None and r["method"] not in (UNPATCHED, *LLM_METHODS) and ref:
            r["select_ms"] = round(r["vision_ms"] + r["selection_ms"] - ref["vision_ms"] - ref["selection_ms"], 3)
        r["efficiency"] = _ratio(ref and ref["ttft_ms"], r["ttft_ms"])
        r["prefill_efficiency"] = _ratio(ref and ref["llm_prefill_ms"], r["llm_prefill_ms"])
        r["select_pct_of_ttft"] = _pct(r["select_ms"], r["ttft_ms"])
        r["select_pct_of_vision"] = _pct(r["select_ms"], ref and ref["vision_ms"])
        base = full.get((r["method"], r.get("video_mode"), r["batch_size"]))
        r["prefill_speedup_vs_full"] = _ratio(base and base["llm_prefill_ms"], r["llm_prefill_ms"])
        r["warnings"] = _noise(r, ref)
    return records


def _noise(r: dict, ref: Optional[dict]) -> List[str]:
    """A warning when ``r`` feeds the LLM the oracle's tokens at every layer but its prefill
    differs from the oracle's by more than ``NOISE``."""
    if not ref or r is ref or r["layer_tokens"] != ref["layer_tokens"] or not ref["llm_prefill_ms"]:
        return []
    change = r["llm_prefill_ms"] / ref["llm_prefill_ms"] - 1
    if abs(change) <= NOISE:
        return []
    return [f"LLM prefill {r['llm_prefill_ms']:.1f} ms differs from the oracle's {ref['llm_prefill_ms']:.1f} ms "
            f"at the same {r['visual_tokens']} visual tokens by {100 * change:+.0f}% (more than {100 * NOISE:.0f}%): "
            "noise, or work the method adds inside the prefill; do not rank this row on it"]


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 4) if a and b else None


def _pct(part: Optional[float], whole: Optional[float]) -> Optional[float]:
    return round(100 * part / whole, 3) if part is not None and whole else None
