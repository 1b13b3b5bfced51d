"""Peer methods inside upstream llava: in process (batch == singles, ratio 1.0,
anyres per crop) and through the unchanged ``llava.eval.model_vqa_loader``."""

import pytest
import torch

import llava_freepruner
from llava_freepruner.config import Config
from llava_freepruner.runtime.stats import read_jsonl
from llava_freepruner.fixtures.tiny import TinySpec

from conftest import load_llava, run_upstream
from test_llava_patch import encode, pixels

pytestmark = pytest.mark.usefixtures("unpatched")
VISION_PEERS = ("visionzip", "divprune", "vispruner")
CPU = {"FREEPRUNER_DEVICE": "cpu"}


@pytest.fixture(scope="module")
def v15(checkpoints):
    return load_llava(checkpoints())


@pytest.mark.parametrize("method", VISION_PEERS)
def test_ratio_one_identical_half_keeps_288_and_batch_equals_singles(v15, photo_dir, method):
    _, model, processor = v15
    images = pixels(processor, photo_dir)
    reference = encode(model, images)
    llava_freepruner.apply(Config(vision_method=method, ratio=1.0))
    assert torch.equal(encode(model, images), reference)
    llava_freepruner.apply(Config(vision_method=method, ratio=0.5))
    batch = encode(model, images)
    singles = torch.cat([encode(model, images[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, 288, reference.shape[2])
    torch.testing.assert_close(batch, singles, rtol=1e-3, atol=1e-3)


def test_visionzip_feeds_cls_dominant_then_contextual(v15, photo_dir):
    _, model, processor = v15
    images = pixels(processor, photo_dir, ("coffee",))
    full = encode(model, images)[0]
    llava_freepruner.apply(Config(vision_method="visionzip", tokens=64))
    kept = encode(model, images)[0]
    assert kept.shape[0] == 64
    # 53 dominant patches are rows of the unpruned output, in raster order; [CLS]
    # and the 10 contextual tokens are not.
    matches = [torch.nonzero((full == row).all(-1)).flatten().tolist() for row in kept]
    assert matches[0] == [] and all(m == [] for m in matches[54:])
    dominant = [m[0] for m in matches[1:54]]
    assert len(dominant) == 53 and dominant == sorted(dominant)


def generate_anyres(model, tokenizer, processor, photo_dir, names):
    from PIL import Image
    from llava.mm_utils import process_images, tokenizer_image_token

    photos = [Image.open(photo_dir / f"{n}.png").convert("RGB") for n in names]
    images = process_images(photos, processor, model.config)
    ids = tokenizer_image_token("USER: <image>\nWhat is this? ASSISTANT:", tokenizer, return_tensors="pt")
    with torch.inference_mode():
        model.generate(ids[None], images=[x.float() for x in images], image_sizes=[p.size for p in photos],
                       max_new_tokens=1, do_sample=False)


@pytest.mark.parametrize("method", ("visionzip", "divprune"))
def test_anyres_prunes_every_crop_to_its_budget(checkpoints, photo_dir, tmp_path, method):
    tokenizer, model, processor = load_llava(checkpoints(TinySpec(anyres=True)))
    model.float()
    stats = tmp_path / "s.jsonl"
    llava_freepruner.apply(Config(vision_method=method, ratio=0.25, stats=str(stats)))
    generate_anyres(model, tokenizer, processor, photo_dir, ("chelsea",))
    llava_freepruner.remove()
    record = read_jsonl(stats)[0]
    crops = record["crops"]
    assert len(crops) >= 3
    assert [c["tokens_out"] for c in crops] == [max(1, int(c["tokens_in"] * 0.25 + 0.5)) for c in crops]
    assert record["tokens_out"] < 0.3 * record["tokens_in"]


# --- through the unchanged upstream entry point ----------------------------------------


def vqa(checkpoint, question_file, photo_dir, out_dir, env_vars, name):
    answers, stats = out_dir / f"{name}.jsonl", out_dir / f"{name}-stats.jsonl"
    result = run_upstream(
        "llava.eval.model_vqa_loader",
        ["--model-path", checkpoint, "--question-file", question_file, "--image-folder", photo_dir,
         "--answers-file", answers, "--temperature", "0", "--max_new_tokens", "3"],
        {**CPU, **env_vars, "FREEPRUNER_STATS": str(stats)}, cwd=out_dir,
    )
    return result, answers, stats


@pytest.mark.parametrize("method", VISION_PEERS)
def test_upstream_eval_keeps_288_of_576(checkpoints, question_file, photo_dir, tmp_path, method):
    result, answers, stats = vqa(checkpoints(), question_file, photo_dir, tmp_path,
                                 {"FREEPRUNER_METHOD": method, "FREEPRUNER_RATIO": "0.5"}, method)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"freePruner: {method} keeping 288 of 576 visual tokens per image." in result.stderr
    assert [(r["tokens_in"], r["tokens_out"]) for r in read_jsonl(stats)] == [(576, 288)] * 4
    assert len(read_jsonl(answers)) == 4


def test_upstream_eval_dart_prunes_inside_the_llm(checkpoints, question_file, photo_dir, tmp_path):
    result, answers, stats = vqa(checkpoints(TinySpec(llm_layers=4)), question_file, photo_dir, tmp_path,
                                 {"FREEPRUNER_METHOD": "dart", "FREEPRUNER_RATIO": "0.5"}, "dart")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DART at LLM layer 2" in result.stderr
    records = read_jsonl(stats)
    assert [r["tokens_out"] for r in records] == [576] * 4
    assert [r["llm_visual_alive"] for r in records] == [[576, 576, 288, 288]] * 4
    assert len(read_jsonl(answers)) == 4


def test_upstream_eval_cdpruner_without_text_tower_is_refused(checkpoints, question_file, photo_dir, tmp_path):
    result, answers, _ = vqa(checkpoints(), question_file, photo_dir, tmp_path,
                             {"FREEPRUNER_METHOD": "cdpruner", "FREEPRUNER_RATIO": "0.5"}, "cdpruner")
    assert result.returncode != 0
    assert "FREEPRUNER_METHOD=cdpruner needs the CLIP text tower" in result.stderr
    assert "FREEPRUNER_CLIP_TEXT" in result.stderr
    assert not answers.exists() or answers.read_text() == ""


def test_upstream_eval_cdpruner_with_the_towers_clip_checkpoint(checkpoints, question_file, photo_dir, tmp_path):
    result, answers, stats = vqa(checkpoints(TinySpec(clip_text=True)), question_file, photo_dir, tmp_path,
                                 {"FREEPRUNER_METHOD": "cdpruner", "FREEPRUNER_RATIO": "0.5"}, "cdpruner")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["tokens_out"] for r in read_jsonl(stats)] == [288] * 4
    assert len(read_jsonl(answers)) == 4


def test_clip_text_folder_must_exist():
    from llava_freepruner.config import ConfigError, from_env

    with pytest.raises(ConfigError, match="FREEPRUNER_CLIP_TEXT='/nowhere' is not valid"):
        from_env({"FREEPRUNER_METHOD": "cdpruner", "FREEPRUNER_RATIO": "0.5", "FREEPRUNER_CLIP_TEXT": "/nowhere"})
