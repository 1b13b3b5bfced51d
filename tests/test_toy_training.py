"""Training helpers of the toy LLaVA: projector scaling, the questions of a scene, patch labels."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch import nn

from llava_freepruner.tools.toy import projector_scale
from llava_freepruner.tools.toy.scenes import Scene, Shape

train = pytest.importorskip("llava_freepruner.tools.toy.train")


def projector(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8))


def test_folded_standardisation_reads_raw_features_exactly():
    features = torch.randn(3, 5, 6) * torch.tensor([0.2, 1, 3, 0.5, 2, 1]) + torch.arange(6.0)
    mean, std = projector_scale.feature_stats(features)
    standardized = projector_scale.standardize(features, mean, std)
    assert torch.allclose(standardized.reshape(-1, 6).mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(standardized.reshape(-1, 6).std(0), torch.ones(6), atol=1e-5)
    model = projector()
    expected = model(standardized)
    projector_scale.fold_standardization(model[0], mean, std)
    assert torch.allclose(model(features), expected, atol=1e-5)


def test_output_is_scaled_to_the_target_rms():
    model = projector()
    sample = torch.randn(4, 5, 6)
    before = projector_scale.rms(model(sample))
    assert projector_scale.match_output_rms(model, model[2], sample, 0.05) == pytest.approx(before)
    assert projector_scale.rms(model(sample)) == pytest.approx(0.05, rel=1e-5)


def test_training_questions_cover_each_family_and_weigh_families_equally():
    scene = Scene("photo", (0, 0, 224, 224), (
        Shape("circle", "red", 0, 0, 30), Shape("square", "blue", 100, 0, 30),
        Shape("triangle", "red", 0, 100, 30), Shape("circle", "green", 100, 100, 30)))
    rng = random.Random(0)
    for _ in range(20):
        asked = train.training_questions(rng, scene)
        families = Counter(q.family for q in asked)
        # colour: only the square and the triangle are unique shapes; shape: blue and green.
        # exists: three objects-with-colour pairs are absent ('no'); three of the four 'yes'.
        assert families == {"color": 2, "shape": 2, "count": 1, "exists": 6, "describe": 1}
        assert sorted(q.answer for q in asked if q.family == "exists") == ["no"] * 3 + ["yes"] * 3
        assert len({q.question for q in asked}) == len(asked)
        assert {q.answer for q in asked if q.family == "color"} == {"blue", "red"}
        assert asked[-1].text == "List the objects from top to bottom."
        assert asked[-1].answer == "red circle, blue square, red triangle, green circle"
        weights = train.family_weights(asked)
        for family in families:
            assert sum(w for w, q in zip(weights, asked) if q.family == family) == pytest.approx(1.0)


def test_patches_are_labelled_by_the_object_covering_them():
    from llava_freepruner.tools.toy import grounding

    scene = Scene("photo", (0, 0, 224, 224), (Shape("square", "red", 14, 14, 28), Shape("circle", "blue", 98, 98, 42)))
    labels = grounding.patch_labels(scene).reshape(16, 16)
    square = torch.full((16, 16), False)
    square[1:3, 1:3] = True
    assert torch.equal(labels == 0, square)
    assert (labels == 1).sum() == 9 and (labels[7:10, 7:10] == 1).all()   # a 3 x 3 patch disc
    words = {" red": 1.0, " square": 2.0, " blue": 10.0, " circle": 20.0, " background": -1.0}
    targets, objects = grounding.patch_targets([scene], lambda text: torch.tensor([words[text]]))
    assert torch.equal(objects[0].reshape(16, 16), labels >= 0)
    assert targets[0].reshape(16, 16)[1, 1] == 3.0 and targets[0].reshape(16, 16)[8, 8] == 30.0
    assert targets[0].reshape(16, 16)[0, 0] == -1.0


def test_unfolding_the_standardisation_undoes_folding_it():
    features = torch.randn(3, 5, 6) * 2 + 1
    mean, std = projector_scale.feature_stats(features)
    model = projector()
    expected = model(projector_scale.standardize(features, mean, std))
    projector_scale.fold_standardization(model[0], mean, std)
    projector_scale.unfold_standardization(model[0], mean, std)
    assert torch.allclose(model(projector_scale.standardize(features, mean, std)), expected, atol=1e-5)


def test_stored_adapters_load_back_into_fresh_ones():
    from llava_freepruner.tools.toy import lora

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    first = lora.attach(base, rank=2, targets=["0", "1"])
    for module in first.values():
        nn.init.normal_(module.B)
    x = torch.randn(4, 8)
    expected = base(x)
    stored = lora.state(first)
    fresh = lora.attach(nn.Sequential(base[0].base, base[1].base), rank=2, targets=["0", "1"])
    lora.load(fresh, stored)
    torch.testing.assert_close(nn.Sequential(*[fresh[p] for p in ("0", "1")])(x), expected, atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="lack 1 adapters"):
        lora.load(fresh, {k: v for k, v in stored.items() if not k.startswith("lora.1.")})
