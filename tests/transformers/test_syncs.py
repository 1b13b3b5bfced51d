"""What freePruner on transformers' LLaVA classes costs a GPU, counted on the CPU: the
plugin's host syncs and aten ops per generate() on the LLaVA-1.5 layout (24 x 24 patches),
where the dropped placeholders leave the sequence around the language model."""

import pytest
import torch

from llava_freepruner.bench import hf_model
from llava_freepruner.bench.count import count_row

BATCHES = (1, 8)


@pytest.fixture(scope="module")
def counts():
    """batch size -> counts of one generate() (2 decode steps), freePruner at ratio 0.5."""
    bench = hf_model.build_random("tiny-llava-1.5-hf", 2, 4, "cpu", torch.float16)
    return {batch: count_row(bench, hf_model.make_inputs(bench, batch, 12), "freepruner", 0.5) for batch in BATCHES}


def plugin_ops(counts) -> float:
    return counts.before_decode.plugin_ops + counts.per_step("decode").plugin_ops


@pytest.mark.parametrize("batch", BATCHES)
def test_the_shortened_prompt_reads_the_device_at_most_twice_and_decode_steps_never(counts, batch):
    row = counts[batch]
    assert row.per_step("prefill").plugin_ops > 0          # the prompt was shortened in the prefill
    assert row.per_step("between").plugin_syncs + row.per_step("prefill").plugin_syncs <= 2, row.sync_sites
    assert row.per_step("decode").plugin_syncs == 0, row.sync_sites


def test_plugin_ops_do_not_grow_with_the_batch(counts):
    assert plugin_ops(counts[8]) <= 1.15 * plugin_ops(counts[1]), {b: plugin_ops(c) for b, c in counts.items()}
