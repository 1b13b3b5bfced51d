"""What freePruner on transformers' LLaVA and Qwen-VL classes costs a GPU, counted on the CPU:
the plugin's host syncs and aten ops per generate() on the LLaVA-1.5 layout (24 x 24 patches)
and the Qwen-VL layouts (32 x 32 patches, 16 x 16 merged tokens), where the dropped
placeholders leave the sequence around the language model."""

import pytest
import torch

from llava_freepruner.runtime.methods import REGISTRY
from llava_freepruner.tools.bench import hf_model
from llava_freepruner.tools.bench.count import count_row

BATCHES = (1, 8)


@pytest.fixture(scope="module")
def llava():
    """The LLaVA-1.5 layout, tiny widths, 2 decoder and 4 tower layers."""
    return hf_model.build_random("tiny-llava-1.5-hf", 2, 4, "cpu", torch.float16)


@pytest.fixture(scope="module")
def counts(llava):
    """batch size -> counts of one generate() (2 decode steps), freePruner at ratio 0.5."""
    return {batch: count_row(llava, hf_model.make_inputs(llava, batch, 12), "freepruner", 0.5) for batch in BATCHES}


def plugin_ops(counts) -> float:
    return counts.before_decode.plugin_ops + counts.per_step("decode").plugin_ops


@pytest.mark.parametrize("batch", BATCHES)
def test_the_shortened_prompt_reads_the_device_at_most_twice_and_decode_steps_never(counts, batch):
    row = counts[batch]
    assert row.per_step("prefill").plugin_ops > 0          # the prompt was shortened in the prefill
    assert row.per_step("between").plugin_syncs + row.per_step("prefill").plugin_syncs <= 2, row.sync_sites
    assert row.per_step("decode").plugin_syncs == 0, row.sync_sites


def test_a_pruned_decode_step_makes_the_host_read_the_device_no_more_than_unpruned(counts):
    """An unpadded prompt that generate() hands the decoder without a mask keeps none when
    shortened: a built mask costs a device read in the host's mask code at every step."""
    bench = hf_model.build_random("tiny-llava-1.5-hf", 2, 4, "cpu", torch.float16)
    unpruned = count_row(bench, hf_model.make_inputs(bench, 1, 12), "freepruner", 1.0)
    assert counts[1].per_step("decode").host_syncs == unpruned.per_step("decode").host_syncs, counts[1].sync_sites
    assert counts[1].per_step("prefill").host_syncs <= unpruned.per_step("prefill").host_syncs


def test_plugin_ops_do_not_grow_with_the_batch(counts):
    assert plugin_ops(counts[8]) <= 1.15 * plugin_ops(counts[1]), {b: plugin_ops(c) for b, c in counts.items()}


@pytest.mark.parametrize("method", [name for name, cls in REGISTRY.items()
                                    if not cls.needs_instruction and name != "freepruner"])
def test_every_vision_method_costs_the_same_ops_at_any_batch(llava, method):
    """Work batched over the images, not looped per image: VisionZip's merged rows included."""
    one, eight = (count_row(llava, hf_model.make_inputs(llava, batch, 12), method, 0.5) for batch in BATCHES)
    assert one.before_decode.plugin_ops > 0
    assert plugin_ops(eight) <= 1.15 * plugin_ops(one), (one.plugin_op_names, eight.plugin_op_names)
    assert eight.per_step("decode").plugin_syncs == 0


# Qwen-VL: vision-side pruning after the patch merger, at the published layouts (all tower
# blocks, 1,024 patches -> 256 merged tokens per picture) 64 wide. Before the first token the
# plugin reads the device twice: the image grid (image_grid_thw.tolist(), to plan the crops;
# the host's tower reads it as well, to split its output and lay out its windows) and each
# prompt's placeholder count (placeholders.sum(1).tolist(), to shorten the sequence around the
# language model). Qwen2.5-VL's window order is worked out on the host from the grid read.
QWEN_SYNC_SITES = {"setup": "llava_freepruner/runtime/backends/transformers_qwen.py",
                   "between": "llava_freepruner/runtime/backends/transformers_llava.py"}


@pytest.fixture(scope="module")
def qwen_counts():
    """``qwen_counts(name, method)`` -> batch size -> counts of one generate() (2 decode steps) at ratio 0.5."""
    counted = {}

    def get(name, method="freepruner"):
        if (name, method) not in counted:
            bench = hf_model.build_random(name, 2, None, "cpu", torch.float16)
            counted[name, method] = {batch: count_row(bench, hf_model.make_inputs(bench, batch, 12), method, 0.5)
                                     for batch in BATCHES}
        return counted[name, method]

    return get


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_qwen_reads_the_grid_and_the_placeholder_counts_once_each_and_decode_steps_never(qwen_counts, name):
    for batch, row in qwen_counts(name).items():
        assert row.before_decode.plugin_syncs <= 2, (batch, row.sync_sites)
        for phase, sites in row.sync_sites.items():
            assert phase in QWEN_SYNC_SITES and all(site.startswith(QWEN_SYNC_SITES[phase] + ":")
                                                    and site.endswith("(tolist)") for site in sites), row.sync_sites
            assert sum(sites.values()) == 1, (batch, phase, sites)
        assert row.per_step("decode").plugin_syncs == 0, (batch, row.sync_sites)
        assert row.per_step("prefill").plugin_ops > 0          # the prompt was shortened in the prefill


# VisionZip merges rows, which take the place of the tokens they grew from: placed for the whole batch at once
@pytest.mark.parametrize("name, method", [("tiny-qwen2.5-vl", "freepruner"), ("tiny-qwen2-vl", "freepruner"),
                                          ("tiny-qwen3-vl", "freepruner"), ("tiny-qwen2.5-vl", "visionzip")])
def test_qwen_plugin_ops_do_not_grow_with_the_batch(qwen_counts, name, method):
    counts = qwen_counts(name, method)
    assert plugin_ops(counts[8]) <= 1.15 * plugin_ops(counts[1]), {b: plugin_ops(c) for b, c in counts.items()}
