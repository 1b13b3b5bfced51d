"""fit_recipe end to end on a tiny offline LLaVA checkpoint (CLIP tower, tokenizer, images)."""

import io
import json
import time

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaTokenizer

from llava_freepruner.runtime.fitprune import flops_reduction, load_recipe
from llava_freepruner.tools.fitprune_fit.checkpoint import fit_recipe
from test_llm_tiny_models import init_weights, tiny_config
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

WORDS = ("what is the color of shape in this picture image left right top bottom red green blue "
         "how many objects are there answer with a single word yes no describe USER ASSISTANT").split()


def build_checkpoint(root, image_size=224, patch=14):
    vision_dir = root / "clip-tiny"
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=4, image_size=image_size, patch_size=patch))
    init_weights(clip, seed=7, std=0.1).save_pretrained(vision_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(vision_dir)

    model_dir = root / "llava-tiny-fit"
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model_file, vocab_size=120,
                                   model_type="bpe", character_coverage=1.0, minloglevel=2)
    model_dir.mkdir()
    (model_dir / "tokenizer.model").write_bytes(model_file.getvalue())
    tokenizer = LlamaTokenizer(str(model_dir / "tokenizer.model"), legacy=True)
    tokenizer.save_pretrained(model_dir)

    config = tiny_config(mm_vision_tower=str(vision_dir), mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
                         mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
                         mm_use_im_patch_token=False, image_aspect_ratio="pad", tokenizer_model_max_length=2048,
                         tokenizer_padding_side="right")
    config.vocab_size = len(tokenizer)
    model = init_weights(LlavaLlamaForCausalLM(config), seed=11)
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def write_questions(root, count):
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 255, (60 + 7 * i, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"img{i}.png")
        question = " ".join(rng.choice(WORDS, size=6 + i % 5))
        lines.append(json.dumps({"question_id": i, "image": f"img{i}.png", "text": question}))
    path = root / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, images


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fitprune_fit")
    model_dir = build_checkpoint(root)
    questions, images = write_questions(root, 6)
    return root, model_dir, questions, images


def test_fit_reaches_the_budget(setup):
    root, model_dir, questions, images = setup
    out = root / "recipe.json"
    started = time.time()
    recipe = fit_recipe(str(model_dir), str(questions), str(images), 0.6, str(out), progress=False)
    elapsed = time.time() - started
    record = json.loads(out.read_text())
    assert recipe.num_visual_tokens == 256 and recipe.num_layers == 32
    achieved = flops_reduction(256, recipe.deletions, 64, 128)
    assert 0.58 <= achieved <= 0.66, (achieved, recipe.deletions)
    assert record["achieved_reduction"] == pytest.approx(achieved, abs=1e-6)
    assert record["target_reduction"] == 0.6 and record["samples"] == 6 and 0 < record["alpha"] <= 1
    assert len(record["calibration_sha256"]) == 64 and record["wall_time_s"] > 0
    assert load_recipe(str(out)).deletions == recipe.deletions
    print(f"fit time {elapsed:.1f} s, achieved {achieved:.4f}, alpha {record['alpha']:.4f}")


def test_fit_rejects_bad_inputs(setup, tmp_path):
    root, model_dir, questions, images = setup
    out = str(tmp_path / "r.json")
    for reduction in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=f"reduction={reduction}"):
            fit_recipe(str(model_dir), str(questions), str(images), reduction, out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no questions"):
        fit_recipe(str(model_dir), str(empty), str(images), 0.5, out)
    broken = tmp_path / "missing.jsonl"
    broken.write_text(json.dumps({"question_id": "q7", "image": "nope.png", "text": "hi"}) + "\n")
    with pytest.raises(FileNotFoundError, match="nope.png.*'q7'"):
        fit_recipe(str(model_dir), str(broken), str(images), 0.5, out)
    with pytest.raises(ValueError, match="samples=50 but"):
        fit_recipe(str(model_dir), str(questions), str(images), 0.5, out, samples=50)
    with pytest.raises(ValueError, match="conv_mode='nope'.*llava_v1"):
        fit_recipe(str(model_dir), str(questions), str(images), 0.5, out, samples=1, conv_mode="nope")
