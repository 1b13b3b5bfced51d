"""Decoder-side pruning through upstream llava's generate: no host sync in decode steps, at
most two before the first token (spans included), and no per-sample work (ops flat in the
batch size)."""

import pytest
import torch

from llava_freepruner.tools.bench import count, model
from llm_sync_checks import LLM_METHODS, Counted, check_ops_flat_in_batch, check_syncs


@pytest.fixture(scope="module")
def counted():
    return Counted(lambda: model.build_random("tiny-llava-v1.5", None, 2, "cpu", torch.float16), model.make_inputs)


@pytest.mark.parametrize("method", LLM_METHODS)
def test_llm_side_pruning_syncs_at_most_twice_and_never_in_decode(counted, method):
    check_syncs(counted, method, count.BEFORE_DECODE)


@pytest.mark.parametrize("method", LLM_METHODS)
def test_llm_side_pruning_ops_do_not_grow_with_the_batch(counted, method):
    check_ops_flat_in_batch(counted, method, count.BEFORE_DECODE)
