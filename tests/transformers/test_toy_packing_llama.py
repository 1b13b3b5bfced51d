"""A packed sequence gives every question the logits it gets alone (toy training's packing)."""

import pytest
import torch

from llava_freepruner.tools.toy import packing, train
from llava_freepruner.tools.toy.packing import IGNORE, Conversation


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_branches_equal_separate_conversations(attention):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attention)
    model = LlamaForCausalLM(config).eval()
    prefix = torch.randint(1, 64, (9,)).tolist()
    talks = [Conversation(prefix + [5, 6, 7, 8, 40, 41, 2], answer_start=13, answer_end=16),
             Conversation(prefix + [9, 10, 42, 2], answer_start=11, answer_end=13),
             Conversation(prefix + [11, 43, 44, 2, 3], answer_start=10, answer_end=13)]
    rows = [packing.pack(talks), packing.pack(talks[1:2])]
    ids, labels, _, positions, allowed = packing.collate(rows, pad_id=0)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=train.attention_bias(model.model, allowed),
                             position_ids=positions, use_cache=False).last_hidden_state
        packed_logits = model.lm_head(hidden)
        for row, members in ((0, talks), (1, talks[1:2])):
            where = (labels[row] != IGNORE).nonzero()[:, 0]
            expected = []
            for talk in members:
                alone = model(input_ids=torch.tensor([talk.ids])).logits[0]
                expected.append(alone[talk.answer_start - 1:talk.answer_end - 1])
            torch.testing.assert_close(packed_logits[row, where], torch.cat(expected), atol=1e-5, rtol=1e-4)
