"""``bench --count-ops``: the plugin's aten ops and host syncs per ``generate()``, per phase.

A GPU pays for every kernel launch and every host sync; :class:`opcount.OpCounter`
counts both on any device. Hooks on the host's vision tower and LLM body
(``host.HostParts``) cut one ``generate()`` into contiguous phases:

- ``setup``: from the call to the tower's start (input preparation);
- ``tower``: the vision tower's forward, the plugin's capture hooks and its
  hooks on the tower module included;
- ``between``: from the tower's end to the LLM's prompt forward (selection,
  gather, projector, splice into the prompt);
- ``prefill``: the LLM body's forward over the prompt (the plugin's hooks on it
  included), then the LM head and the first token's sampling;
- ``decode``: each later step (one LLM forward of query length 1 with its hooks,
  its LM head, sampling); reported per step.

A warm-up ``generate()`` runs uncounted first, so one-time work is left out.
Threshold tests call :func:`count_row` (or :func:`count_generate` on a model the
caller patched)::

    from llava_freepruner.tools.bench import model          # hf_model: --backend transformers
    from llava_freepruner.tools.bench.count import count_row

    bench = model.build_random("tiny-deep-llava-v1.5", None, None, "cpu", torch.float16)
    inputs = model.make_inputs(bench, 8, 40)           # batch of 8, 40 text tokens
    counts = count_row(bench, inputs, "freepruner", 0.5)
    assert counts.before_decode.plugin_syncs <= 2
    assert counts.per_step("decode").plugin_syncs == 0
"""

from __future__ import annotations

import logging
from dataclasses import asdict, astuple, dataclass, field
from typing import Dict, List, Sequence

import torch

from .model import BenchModel, Inputs
from .opcount import HOST, PLUGIN, OpCounter, Tally
from .runner import UNPATCHED, generate, plugin_config, runs_at

PHASES = ("setup", "tower", "between", "prefill", "decode")
BEFORE_DECODE = PHASES[:-1]


@dataclass(frozen=True)
class PhaseCounts:
    plugin_ops: float = 0
    plugin_syncs: float = 0
    host_ops: float = 0
    host_syncs: float = 0

    @classmethod
    def of(cls, tally: Tally) -> "PhaseCounts":
        return cls(tally.ops[PLUGIN], tally.syncs[PLUGIN], tally.ops[HOST], tally.syncs[HOST])

    def __add__(self, other: "PhaseCounts") -> "PhaseCounts":
        return PhaseCounts(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __truediv__(self, steps: int) -> "PhaseCounts":
        return PhaseCounts(*(round(a / steps, 2) for a in astuple(self)))


@dataclass
class GenerateCounts:
    """What one ``generate()`` cost, per phase (``decode``: all steps together)."""

    phases: Dict[str, PhaseCounts]
    decode_steps: int
    sync_sites: Dict[str, Dict[str, int]] = field(default_factory=dict)      # phase -> "file:line (op)" -> syncs
    plugin_op_names: Dict[str, Dict[str, int]] = field(default_factory=dict)  # phase -> aten op -> plugin ops

    def per_step(self, phase: str) -> PhaseCounts:
        """A phase's counts, per decode step for ``decode``."""
        if phase == "decode":
            return self.phases[phase] / max(self.decode_steps, 1)
        return self.phases[phase]

    @property
    def before_decode(self) -> PhaseCounts:
        """Everything up to the first token: setup, tower, between, prefill."""
        return sum((self.phases[p] for p in BEFORE_DECODE), PhaseCounts())

    def row(self) -> dict:
        """Flat columns: ``<phase>_<plugin_ops|plugin_syncs|host_ops|host_syncs>``, decode per step."""
        columns = {}
        for phase in PHASES:
            for key, value in asdict(self.per_step(phase)).items():
                columns[f"{phase}_{key}"] = value
        columns.update(decode_steps=self.decode_steps, sync_sites=self.sync_sites, plugin_op_names=self.plugin_op_names)
        return columns


class PhaseMarks:
    """Hooks on the tower and the LLM body that move ``counter.phase`` along one ``generate()``."""

    def __init__(self, parts, counter: OpCounter):
        self.counter = counter
        self.prefilled = False
        self.decode_steps = 0
        # first before a forward and last after it: the plugin's own hooks on these modules count inside
        self._handles = [
            parts.vision_tower.register_forward_pre_hook(lambda *_: self._enter("tower"), prepend=True),
            parts.vision_tower.register_forward_hook(lambda *_: self._enter("between")),
            parts.decoder.register_forward_pre_hook(self._llm, with_kwargs=True, prepend=True),
        ]

    def _enter(self, phase: str) -> None:
        self.counter.phase = phase

    def _llm(self, module, args, kwargs) -> None:
        if query_length(args, kwargs) > 1 and not self.prefilled:
            self.prefilled = True
            self._enter("prefill")
        else:
            self.decode_steps += 1
            self._enter("decode")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def query_length(args, kwargs) -> int:
    """Positions an LLM body's forward computes: ``inputs_embeds`` or ``input_ids``."""
    embeds = kwargs.get("inputs_embeds")
    tokens = embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)
    return int(tokens.shape[1])


def count_generate(bench: BenchModel, inputs: Inputs, new_tokens: int = 3, warmup: int = 1) -> GenerateCounts:
    """Count one ``generate()`` of ``bench.model`` as it is (patched or not) on ``inputs``,
    after ``warmup`` uncounted calls. Runs under ``torch.no_grad``, not ``inference_mode``,
    so composite ops are counted as the kernels they launch."""
    with torch.no_grad():
        for _ in range(warmup):
            generate(bench, inputs, new_tokens)
        counter = OpCounter(PHASES[0])
        marks = PhaseMarks(bench.parts, counter)
        try:
            with counter:
                generate(bench, inputs, new_tokens)
        finally:
            marks.remove()
    if not marks.prefilled or marks.decode_steps != new_tokens - 1:
        raise RuntimeError(f"generate ran {'a' if marks.prefilled else 'no'} prefill and {marks.decode_steps} "
                           f"decode steps; expected {new_tokens - 1} after one prefill")
    tallies = counter.tallies
    return GenerateCounts(
        phases={p: PhaseCounts.of(tallies[p]) for p in PHASES},
        decode_steps=marks.decode_steps,
        sync_sites={p: dict(t.sync_sites) for p, t in tallies.items() if t.sync_sites},
        plugin_op_names={p: {name: n for (owner, name), n in t.names.most_common() if owner == PLUGIN}
                         for p, t in tallies.items() if t.ops[PLUGIN]},
    )


def count_row(bench: BenchModel, inputs: Inputs, method: str, ratio: float, new_tokens: int = 3,
              seed: int = 0) -> GenerateCounts:
    """Apply the plugin with ``method`` at ``ratio`` (``none``: leave the model unpatched),
    count one ``generate()``, remove the plugin."""
    import llava_freepruner

    if method != UNPATCHED:
        llava_freepruner.apply(plugin_config(method, ratio, bench.device.type, None, seed))
    try:
        return count_generate(bench, inputs, new_tokens)
    finally:
        if method != UNPATCHED:
            llava_freepruner.remove()


def count_rows(bench: BenchModel, inputs_by_batch: Dict[int, Inputs], methods: Sequence[str],
               ratios: Sequence[float], new_tokens: int, seed: int, log, keep_going: bool = False) -> List[dict]:
    """A record per (method, ratio, batch size): its counts, flat (see :meth:`GenerateCounts.row`);
    ``keep_going``: a failing row is recorded with its error and the others still run."""
    plugin_log = logging.getLogger("llava_freepruner")
    level = plugin_log.level
    plugin_log.setLevel(logging.WARNING)
    records = []
    try:
        for batch, inputs in inputs_by_batch.items():
            for ratio in ratios:
                for method in (m for m in methods if runs_at(m, ratio)):
                    key = {"method": method, "ratio": ratio, "batch_size": batch}
                    try:
                        counts = count_row(bench, inputs, method, ratio, new_tokens, seed)
                    except Exception as err:
                        if not keep_going:
                            raise
                        records.append({**key, "error": f"{type(err).__name__}: {err}"})
                        log(f"  batch {batch} {method} ratio {ratio} FAILED: {records[-1]['error']}")
                        continue
                    records.append({**key, **counts.row()})
                    log(f"  batch {batch} {method:10} ratio {ratio:<5} plugin ops/syncs before the first token "
                        f"{counts.before_decode.plugin_ops}/{counts.before_decode.plugin_syncs}")
    finally:
        plugin_log.setLevel(level)
    return records


def markdown(meta: dict, records: List[dict]) -> str:
    """The records as a table: plugin ``ops/syncs`` per phase, host ops for reference."""
    head = (["method", "ratio", "batch"] + [f"plugin {p}" for p in PHASES[:-1]] + ["plugin decode/step"]
            + [f"host {p}" for p in PHASES[:-1]] + ["host decode/step"])
    lines = [f"Plugin ops / syncs per generate() ({meta['model']}, {meta['backend']}, {meta['dtype']}, "
             f"{meta['device']}); host: ops / syncs.", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in records:
        cells = [r["method"], str(r["ratio"]), str(r["batch_size"])]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"failed: {r['error']}"] + [""] * (len(head) - 4)) + " |")
            continue
        cells += [f"{_n(r[f'{p}_plugin_ops'])} / {_n(r[f'{p}_plugin_syncs'])}" for p in PHASES]
        cells += [f"{_n(r[f'{p}_host_ops'])} / {_n(r[f'{p}_host_syncs'])}" for p in PHASES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"Command: `{meta['command']}`"])


def _n(value: float) -> str:
    return f"{value:g}"
