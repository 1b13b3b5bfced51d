"""fitprune-fit on transformers LLaVA checkpoints: fit a recipe from photos, then prune
with it through the plugin (FREEPRUNER_METHOD=fitprune FITPRUNE_RECIPE=<file>) under generate()."""

import json
import re
import statistics

import pytest
import torch

from llava_freepruner.fixtures import hf_tiny
from llava_freepruner.runtime.fitprune import flops_reduction, load_recipe
from llava_freepruner.tools.fitprune_fit import transformers_fit
from llava_freepruner.tools.fitprune_fit.checkpoint import fit_recipe
from llava_freepruner.fixtures.hf_tiny import TinyHF
from llava_freepruner.tools.prompts import image_question_inputs

LLAVA = TinyHF()
NEXT = TinyHF(kind="llava_next")
QUESTIONS = ["What is in the image?", "Describe the picture in one sentence.", "How many objects are there?",
             "What is on the left?"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, photos):
    """(question file, image folder): one question per photo."""
    root = tmp_path_factory.mktemp("fit_calibration")
    (root / "images").mkdir()
    lines = []
    for number, (name, image) in enumerate(sorted(photos.items())):
        image.save(root / "images" / f"{name}.png")
        lines.append(json.dumps({"question_id": f"q{number}", "image": f"{name}.png",
                                 "text": QUESTIONS[number % len(QUESTIONS)]}))
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "questions.jsonl", root / "images"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``checkpoints(spec)`` -> the folder of a saved tiny checkpoint, written once per spec."""
    root, saved = tmp_path_factory.mktemp("fit_checkpoints"), {}

    def get(spec):
        if spec not in saved:
            saved[spec] = hf_tiny.save(spec, str(root / f"tiny-{spec.kind}"))
        return saved[spec]

    return get


def _visual_counts(model, processor, photos):
    token = model.config.image_token_id
    return [int((image_question_inputs(processor, image, "hi")["input_ids"] == token).sum())
            for _, image in sorted(photos.items())]


def test_the_cached_input_is_the_spliced_prompt_of_the_model(checkpoints, calibration, photos):
    model, processor = transformers_fit.load(checkpoints(LLAVA), "cpu")
    questions, images = calibration
    record = json.loads(questions.read_text().splitlines()[0])
    embeds, (start, end), extra = transformers_fit.encode_sample(model, processor, record, str(images))
    inputs = image_question_inputs(processor, photos[record["image"][:-4]], record["text"])
    ids = inputs["input_ids"][0]
    assert embeds.shape[:2] == (1, ids.shape[0])
    image = ids == model.config.image_token_id
    assert image[start:end].all() and end - start == 576 and int(image.sum()) == 576
    assert set(extra) <= {"attention_mask"}      # LLaVA's language model gets no position ids
    with torch.no_grad():
        reference = model(**inputs).logits
        hidden = model.model.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
        logits = model.lm_head(hidden)
    torch.testing.assert_close(logits, reference)


@pytest.mark.parametrize("spec", [LLAVA, NEXT], ids=["llava", "llava_next"])
def test_a_fitted_recipe_prunes_generate_through_the_plugin(spec, checkpoints, calibration, photos, plugin, tmp_path):
    import llava_freepruner
    from llava_freepruner.config import from_env

    folder = checkpoints(spec)
    questions, images = calibration
    out = tmp_path / "recipe.json"
    recipe = fit_recipe(folder, str(questions), str(images), 0.5, str(out), progress=False)
    model, processor = transformers_fit.load(folder, "cpu")
    text = model.config.text_config
    counts = _visual_counts(model, processor, photos)
    record = json.loads(out.read_text())
    assert record["model"] == f"tiny-{spec.kind}" and record["model_type"] == spec.kind
    assert record["prompt"] == "chat_template" and record["samples"] == 4
    assert recipe.num_layers == text.num_hidden_layers == record["num_layers"]
    # the model's visual-token count (LLaVA-NeXT's varies with the image size: the median)
    assert recipe.num_visual_tokens == int(statistics.median(counts)) == record["num_visual_tokens"]
    assert spec.kind != "llava" or counts == [576] * 4
    achieved = flops_reduction(recipe.num_visual_tokens, recipe.deletions, text.hidden_size, text.intermediate_size)
    assert achieved >= 0.5 and record["achieved_reduction"] == pytest.approx(achieved, abs=1e-6)
    assert sum(recipe.deletions) > 0
    assert load_recipe(str(out)).deletions == recipe.deletions
    print(f"{spec.kind}: visual tokens {counts}, recipe for {recipe.num_visual_tokens}: {list(recipe.deletions)}, "
          f"achieved {achieved:.4f}, alpha {record['alpha']}, {record['wall_time_s']} s")

    # the recipe file, as FITPRUNE_RECIPE, prunes this model's decoder under plain generate()
    stats = tmp_path / "stats.jsonl"
    plugin()  # leaves the plugin removed after the test
    llava_freepruner.apply(from_env({"FREEPRUNER_METHOD": "fitprune", "FITPRUNE_RECIPE": str(out),
                                     "FREEPRUNER_STATS": str(stats)}))
    name = sorted(photos)[0]
    inputs = image_question_inputs(processor, photos[name], "What is in the image?")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    llava_freepruner.remove()
    cache = output.past_key_values
    lengths = ([layer.keys.shape[-2] for layer in cache.layers] if hasattr(cache, "layers")
               else [cache.key_cache[i].shape[-2] for i in range(len(cache.key_cache))])
    first = [json.loads(line) for line in stats.read_text().splitlines()][0]
    count = int((inputs["input_ids"] == model.config.image_token_id).sum())
    expected = load_recipe(str(out))
    if count != expected.num_visual_tokens:      # LLaVA-NeXT: another image size, the recipe is scaled
        from llava_freepruner.runtime.budget import scale_deletions

        deletions = scale_deletions(expected, count)[0]
    else:
        deletions = list(expected.deletions)
    alive, left = [], count
    for k in deletions:
        left -= k
        alive.append(left)
    assert first["llm_visual_alive"] == alive and alive[-1] < count
    # layer l's cache holds the tokens that entered it: the deletions of the layers before it are gone
    assert [lengths[0] - n for n in lengths] == [sum(deletions[:l]) for l in range(len(deletions))]


def _refuse_loading(*args, **kwargs):
    raise AssertionError("the model was loaded before the inputs were checked")


def test_bad_inputs_are_refused_by_name_before_loading(checkpoints, calibration, tmp_path, monkeypatch):
    monkeypatch.setattr(transformers_fit, "load", _refuse_loading)
    folder = checkpoints(LLAVA)
    questions, images = calibration
    out = str(tmp_path / "r.json")
    for reduction in (0, 1, 1.5, -0.2, True):
        with pytest.raises(ValueError, match=f"reduction={reduction}.*between 0 and 1"):
            fit_recipe(folder, str(questions), str(images), reduction, out)
    broken = tmp_path / "missing.jsonl"
    broken.write_text(json.dumps({"question_id": "q7", "image": "nope.png", "text": "hi"}) + "\n")
    with pytest.raises(FileNotFoundError, match="nope.png.*'q7'"):
        fit_recipe(folder, str(broken), str(images), 0.5, out)
    with pytest.raises(ValueError, match=r"conv_mode \(--conv-mode\) applies to upstream LLaVA checkpoints only"):
        fit_recipe(folder, str(questions), str(images), 0.5, out, conv_mode="llava_v1")
    other = tmp_path / "gemma"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    with pytest.raises(ValueError, match="model_type 'gemma3'.*llava, llava_next, qwen2_vl, qwen2_5_vl, "
                                         "qwen3_vl.*llava_llama"):
        fit_recipe(str(other), str(questions), str(images), 0.5, out)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        fit_recipe(str(tmp_path), str(questions), str(images), 0.5, out)
    (other / "config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"model \S*gemma: \S*config.json: expected a JSON object, got list"):
        fit_recipe(str(other), str(questions), str(images), 0.5, out)
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        fit_recipe(str(tmp_path / "nowhere"), str(questions), str(images), 0.5, out)


def test_the_command_names_an_unknown_checkpoint_kind(tmp_path, calibration, capsys):
    from llava_freepruner.tools.cli import main

    questions, images = calibration
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    code = main(["fitprune-fit", "--model-path", str(tmp_path), "--question-file", str(questions),
                 "--image-folder", str(images), "--reduction", "0.5", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "model_type 'idefics3'" in capsys.readouterr().err


def test_fitting_is_refused_while_the_plugin_prunes(checkpoints, calibration, plugin, tmp_path, monkeypatch):
    monkeypatch.setattr(transformers_fit, "load", _refuse_loading)
    questions, images = calibration
    plugin(llm_method="fastv", ratio=0.5)
    with pytest.raises(ValueError, match=r"the plugin is applied and prunes \(method \S*fastv\).*unset the FREEPRUNER_"):
        fit_recipe(checkpoints(LLAVA), str(questions), str(images), 0.5, str(tmp_path / "r.json"))


def test_several_reductions_in_one_run_give_the_recipes_of_separate_runs(checkpoints, calibration, tmp_path, capsys,
                                                                       monkeypatch):
    """One load and one encoding of the samples serve every reduction; each recipe is the one
    a run of its own fits, and is on disk before the next one starts."""
    from llava_freepruner.runtime.fitprune import Recipe
    from llava_freepruner.tools.cli import main

    folder = checkpoints(LLAVA)
    questions, images = calibration
    alone = {reduction: fit_recipe(folder, str(questions), str(images), reduction, str(tmp_path / f"{reduction}.json"),
                                   progress=False) for reduction in (0.3, 0.5)}
    loads, written = [], []
    original_load, original_save = transformers_fit.load, Recipe.save
    monkeypatch.setattr(transformers_fit, "load", lambda *args: loads.append(args) or original_load(*args))
    monkeypatch.setattr(Recipe, "save", lambda self, path: written.append(path) or original_save(self, path))
    code = main(["fitprune-fit", "--model-path", folder, "--question-file", str(questions), "--image-folder",
                 str(images), "--reduction", "0.3,0.5", "--out", str(tmp_path / "both" / "fit_{reduction}.json")])
    assert code == 0 and len(loads) == 1
    assert written == [str(tmp_path / "both" / "fit_0.3.json"), str(tmp_path / "both" / "fit_0.5.json")]
    for reduction, recipe in alone.items():
        together = load_recipe(str(tmp_path / "both" / f"fit_{reduction:g}.json"))
        assert together.deletions == recipe.deletions and together.num_visual_tokens == recipe.num_visual_tokens
        assert together.metadata["alpha"] == recipe.metadata["alpha"]
        assert together.metadata["target_reduction"] == reduction
    assert sum(alone[0.5].deletions) > sum(alone[0.3].deletions)
    out = capsys.readouterr().out
    assert "fit_0.3.json: alpha" in out and "fit_0.5.json: alpha" in out


@pytest.mark.parametrize("reduction, out, message", [
    ("0.5,0.8", "r.json", r"--out '\S*r.json' is one file for 2 reductions: name the files with \{reduction\}"),
    ("0.5,half", "r_{reduction}.json", r"--reduction '0.5,half' is not valid: expected numbers strictly between 0 and 1"),
    ("1.5", "r.json", r"--reduction '1.5' is not valid"),
    ("0.5,0.50", "r_{reduction}.json", r"reduction 0.5 given twice"),
])
def test_bad_reduction_lists_are_named_before_loading(reduction, out, message, checkpoints, calibration, tmp_path,
                                                     capsys, monkeypatch):
    from llava_freepruner.tools.cli import main

    monkeypatch.setattr(transformers_fit, "load", _refuse_loading)
    questions, images = calibration
    code = main(["fitprune-fit", "--model-path", checkpoints(LLAVA), "--question-file", str(questions),
                 "--image-folder", str(images), "--reduction", reduction, "--out", str(tmp_path / out)])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_reduction_out_of_reach_is_named_and_the_recipes_before_it_are_kept(checkpoints, calibration, tmp_path,
                                                                             capsys):
    from llava_freepruner.tools.cli import main

    questions, images = calibration
    code = main(["fitprune-fit", "--model-path", checkpoints(LLAVA), "--question-file", str(questions),
                 "--image-folder", str(images), "--reduction", "0.3,0.99", "--out", str(tmp_path / "r{reduction}.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "reduction 0.99: the FLOPs budget cannot be met even with tolerance alpha = 1" in err
    assert f"written before it: {tmp_path / 'r0.3.json'}" in err
    assert load_recipe(str(tmp_path / "r0.3.json")).metadata["target_reduction"] == 0.3
    assert not (tmp_path / "r0.99.json").exists()
