"""Decoder-side pruning (FitPrune, FastV) driven by the configuration, through
upstream's own generate on tiny 32-layer LLaVA checkpoints."""

import pytest
import torch

import llava_freepruner
from llava_freepruner.config import Config, ConfigError
from llava_freepruner.runtime.fitprune import flops_reduction, load_recipe, scale_deletions
from llava_freepruner.runtime.stats import read_jsonl
from llava_freepruner.fixtures.tiny import TinySpec

from conftest import load_llava, run_upstream


pytestmark = pytest.mark.usefixtures("unpatched")


@pytest.fixture(scope="module")
def deep(checkpoints):
    path = checkpoints(TinySpec(llm_layers=32))
    tokenizer, model, processor = load_llava(path)
    return path, tokenizer, model.float(), processor


def generate(deep, photo_dir, names=("coffee", "rocket")):
    from PIL import Image
    from llava.mm_utils import process_images, tokenizer_image_token

    _, tokenizer, model, processor = deep
    images = process_images([Image.open(photo_dir / f"{n}.png").convert("RGB") for n in names], processor, model.config)
    ids = tokenizer_image_token("USER: <image>\nWhat is this? ASSISTANT:", tokenizer, return_tensors="pt")
    with torch.inference_mode():
        return model.generate(ids[None].repeat(len(names), 1), images=images.float(), max_new_tokens=3, do_sample=False)


def recipe_alive(recipe, visual):
    deletions, _ = scale_deletions(recipe, visual)
    alive, out = visual, []
    for k in deletions:
        alive -= k
        out.append(alive)
    return out


def test_builtin_recipe_is_followed_layer_by_layer(deep, photo_dir, tmp_path):
    stats = tmp_path / "s.jsonl"
    llava_freepruner.apply(Config(vision_method=None, llm_method="fitprune", fitprune_recipe="llava-v1.5-7b@60",
                                  stats=str(stats)))
    generate(deep, photo_dir)
    llava_freepruner.remove()
    records = read_jsonl(stats)
    recipe = load_recipe("llava-v1.5-7b@60")
    model = deep[2]
    # The estimate uses this model's sizes (hidden 64), not the 7B sizes the label refers to.
    reduction = flops_reduction(576, recipe.deletions, model.config.hidden_size, model.config.intermediate_size)
    assert len(records) == 2
    for record in records:
        assert record["tokens_out"] == 576 and record["llm_visual_alive"] == recipe.alive_after_each_layer()
        assert record["llm_flops_reduction"] == pytest.approx(reduction, abs=1e-4)
    assert flops_reduction(576, recipe.deletions, 4096, 11008) == pytest.approx(0.597, abs=0.001)


def test_freepruner_plus_fitprune_scales_recipe_to_tokens_reaching_llm(deep, photo_dir, tmp_path, caplog):
    stats = tmp_path / "s.jsonl"
    llava_freepruner.apply(Config(ratio=0.5, llm_method="fitprune", fitprune_recipe="llava-v1.5-7b@60", stats=str(stats)))
    generate(deep, photo_dir)
    llava_freepruner.remove()
    records = read_jsonl(stats)
    expected = recipe_alive(load_recipe("llava-v1.5-7b@60"), 288)
    assert all(r["tokens_out"] == 288 and r["llm_visual_alive"] == expected for r in records)
    assert expected[-1] < 288 * 0.5


def test_fastv_keeps_fraction_after_its_layer(deep, photo_dir, tmp_path):
    stats = tmp_path / "s.jsonl"
    llava_freepruner.apply(Config(vision_method=None, llm_method="fastv", ratio=0.25, fastv_layer=2, stats=str(stats)))
    generate(deep, photo_dir, ("chelsea",))
    llava_freepruner.remove()
    alive = read_jsonl(stats)[0]["llm_visual_alive"]
    assert alive[:2] == [576, 576] and alive[2:] == [144] * 30


def test_fastv_on_upstream_mistral(checkpoints, photo_dir, tmp_path):
    path = checkpoints(TinySpec(llm="mistral", llm_layers=4))
    tokenizer, model, processor = load_llava(path)
    assert type(model).__name__ == "LlavaMistralForCausalLM"
    mistral = (path, tokenizer, model.float(), processor)
    stats = tmp_path / "s.jsonl"
    llava_freepruner.apply(Config(vision_method=None, llm_method="fastv", ratio=0.25, fastv_layer=1, stats=str(stats)))
    pruned = generate(mistral, photo_dir)
    llava_freepruner.remove()
    assert [r["llm_visual_alive"] for r in read_jsonl(stats)] == [[576, 144, 144, 144]] * 2
    assert pruned.shape[0] == 2


def test_recipe_for_another_depth_or_bad_name_is_refused(deep, photo_dir):
    with pytest.raises(ConfigError, match="FITPRUNE_RECIPE='llava-v1.5-7b@65'.*llava-v1.5-7b@60"):
        llava_freepruner.apply(Config(vision_method=None, llm_method="fitprune", fitprune_recipe="llava-v1.5-7b@65"))


def test_fitprune_through_unchanged_upstream_eval(deep, question_file, photo_dir, tmp_path):
    path = deep[0]
    stats = tmp_path / "stats.jsonl"
    answers = tmp_path / "answers.jsonl"
    env = {"FREEPRUNER_DEVICE": "cpu", "FREEPRUNER_METHOD": "fitprune", "FITPRUNE_RECIPE": "llava-v1.5-7b@40",
           "FREEPRUNER_STATS": str(stats)}
    result = run_upstream("llava.eval.model_vqa_loader",
                          ["--model-path", path, "--question-file", question_file, "--image-folder", photo_dir,
                           "--answers-file", answers, "--temperature", "0", "--max_new_tokens", "3"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_recipe("llava-v1.5-7b@40").alive_after_each_layer()
    assert [r["llm_visual_alive"] for r in read_jsonl(stats)] == [expected] * 4
    assert len(read_jsonl(answers)) == 4
