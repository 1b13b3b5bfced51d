"""What a GPU would pay for each vision method, counted on the CPU (see ``bench.opcount``).

Per ``generate()`` on the LLaVA-1.5 layout (24 x 24 patches and [CLS]), upstream
backend, fp16: no more than two host syncs before the first token, none in a
decode step, and the plugin's op count at batch 8 within 15% of batch 1 (work
batched over crops, not looped per image). These counts stand in for GPU
timing in CI.
"""

import pytest
import torch

from llava_freepruner.tools.bench import count, model
from llava_freepruner.runtime.methods import REGISTRY

VISION_METHODS = sorted(name for name, cls in REGISTRY.items() if not cls.needs_instruction)
BEFORE_DECODE = ("setup", "tower", "between", "prefill")


@pytest.fixture(scope="module")
def tiny():
    bench = model.build_random("tiny-llava-v1.5", 2, 4, "cpu", torch.float16)
    return bench, {batch: model.make_inputs(bench, batch, 8) for batch in (1, 8)}


def plugin_syncs(counts) -> int:
    return sum(counts.phases[phase].plugin_syncs for phase in BEFORE_DECODE)


@pytest.mark.parametrize("method", VISION_METHODS)
def test_selection_makes_no_host_wait_and_costs_the_same_ops_at_any_batch(tiny, method):
    bench, inputs = tiny
    one, eight = (count.count_row(bench, inputs[batch], method, 0.5, new_tokens=2) for batch in (1, 8))
    for counts in (one, eight):
        assert plugin_syncs(counts) <= 2, counts.sync_sites
        assert counts.per_step("decode").plugin_syncs == 0
    assert one.before_decode.plugin_ops > 0
    assert eight.before_decode.plugin_ops <= 1.15 * one.before_decode.plugin_ops, (one.plugin_op_names,
                                                                                   eight.plugin_op_names)


def test_ratio_one_attaches_no_capture(tiny):
    bench, inputs = tiny
    counts = count.count_row(bench, inputs[8], "freepruner", 1.0, new_tokens=2)
    assert counts.phases["tower"].plugin_ops == 0
    assert plugin_syncs(counts) == 0
