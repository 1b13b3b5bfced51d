"""Shared by the upstream and transformers sync tests: decoder-side pruning (FitPrune, FastV,
DART) on the LLaVA-1.5 layout (576 visual tokens, 32 decoder layers), counted per generate()
by the dispatch-mode counter of ``bench --count-ops``."""

from llava_freepruner.tools.bench import count

LLM_METHODS = ("fitprune", "fastv", "dart")
BATCHES = (1, 4)


class Counted:
    """``counted(method, batch)``: the counts of one generate(), computed once."""

    def __init__(self, build, make_inputs):
        self.bench = build()
        self.make_inputs = make_inputs
        self._inputs, self._counts = {}, {}

    def __call__(self, method, batch):
        if batch not in self._inputs:
            self._inputs[batch] = self.make_inputs(self.bench, batch, 12)
        if (method, batch) not in self._counts:
            self._counts[method, batch] = count.count_row(self.bench, self._inputs[batch], method, 0.5)
        return self._counts[method, batch]


def _plugin(counts, phases, what):
    return sum(getattr(counts.phases[phase], what) for phase in phases)


def check_syncs(counted, method, phases):
    """At most two host syncs in ``phases``, none in a decode step, at batch 1 and 4."""
    for batch in BATCHES:
        counts = counted(method, batch)
        assert counts.phases["prefill"].plugin_ops > 0, "the runtime did not prune in the prefill"
        assert _plugin(counts, phases, "plugin_syncs") <= 2, (batch, counts.sync_sites)
        assert counts.per_step("decode").plugin_syncs == 0, (batch, counts.sync_sites)


def check_ops_flat_in_batch(counted, method, phases):
    """The plugin's ops in ``phases`` and per decode step at batch 4 stay within 1.15x those at
    batch 1 (no per-sample work)."""
    one, four = (counted(method, batch) for batch in BATCHES)
    assert _plugin(four, phases, "plugin_ops") <= 1.15 * _plugin(one, phases, "plugin_ops"), (
        one.plugin_op_names, four.plugin_op_names)
    assert four.per_step("decode").plugin_ops <= 1.15 * one.per_step("decode").plugin_ops
