"""Decoder-side pruning through transformers' LLaVA generate: no host sync in decode steps, at
most two in the prefill, and no per-sample work there (ops flat in the batch size). The merge
of image features into the prompt, before the language model, is the vision side's and is
counted by its own tests."""

import pytest
import torch

from llava_freepruner.tools.bench import hf_model
from llm_sync_checks import LLM_METHODS, Counted, check_ops_flat_in_batch, check_syncs

PREFILL = ("prefill",)


@pytest.fixture(scope="module")
def counted():
    return Counted(lambda: hf_model.build_random("tiny-llava-1.5-hf", None, 2, "cpu", torch.float16),
                   hf_model.make_inputs)


@pytest.mark.parametrize("method", LLM_METHODS)
def test_llm_side_pruning_syncs_at_most_twice_and_never_in_decode(counted, method):
    check_syncs(counted, method, PREFILL)


@pytest.mark.parametrize("method", LLM_METHODS)
def test_llm_side_pruning_ops_do_not_grow_with_the_batch(counted, method):
    check_ops_flat_in_batch(counted, method, PREFILL)
