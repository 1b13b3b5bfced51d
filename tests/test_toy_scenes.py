"""The toy task's rules: scenes, questions, question files and scoring."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from llava_freepruner.tools.toy import photos
from llava_freepruner.tools.toy.dataset import PhotoPool, questions, write_question_set
from llava_freepruner.tools.toy.questions import FAMILIES, SUFFIX, candidates, is_correct, normalize
from llava_freepruner.tools.toy.scenes import COLORS, MAX_EXTENT, MIN_EXTENT, SHAPES, SIZE, boxes_apart

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def pool():
    return PhotoPool(["astronaut", "rocket"])


@pytest.fixture(scope="module")
def question_set(pool):
    return list(questions(3, pool, 200))


def test_scenes_follow_the_rules(pool):
    rng = random.Random(0)
    for _ in range(100):
        scene, image = pool.scene(rng)
        assert image.size == (SIZE, SIZE)
        assert 2 <= len(scene.objects) <= 4
        assert len({(o.shape, o.color) for o in scene.objects}) == len(scene.objects)
        for i, obj in enumerate(scene.objects):
            assert obj.shape in SHAPES and obj.color in COLORS
            assert MIN_EXTENT <= obj.extent <= MAX_EXTENT
            assert 0 <= obj.x and obj.x + obj.extent <= SIZE and 0 <= obj.y and obj.y + obj.extent <= SIZE
            assert all(boxes_apart(obj.box(), other.box(), gap=1) for other in scene.objects[i + 1:])
            # The centre of every shape (a triangle's lower centre) shows its exact colour.
            centre = (obj.x + obj.extent // 2, obj.y + (3 * obj.extent) // 4)
            assert image.getpixel(centre) == COLORS[obj.color]


def test_every_question_has_its_unique_answer(question_set):
    for scene, _, q in question_set:
        assert q.text == q.question + SUFFIX
        objects = scene.objects
        if q.family == "color":
            matches = [o for o in objects if o.shape in q.question]
            assert len(matches) == 1 and q.answer == matches[0].color
        elif q.family == "shape":
            matches = [o for o in objects if f" {o.color} " in q.question]
            assert len(matches) == 1 and q.answer == matches[0].shape
        elif q.family == "count":
            assert q.answer == str(len(objects)) and q.answer in ("2", "3", "4")
        else:
            color, shape = q.question[len("Is there a "):-1].split()
            assert color in {o.color for o in objects} and shape in {o.shape for o in objects}
            assert q.answer == ("yes" if any(o.color == color and o.shape == shape for o in objects) else "no")


def test_families_are_mixed_and_yes_no_balanced(question_set):
    families = Counter(q.family for _, _, q in question_set)
    assert set(families) == set(FAMILIES) and min(families.values()) >= 30
    answers = Counter(q.answer for _, _, q in question_set if q.family == "exists")
    assert abs(answers["yes"] - answers["no"]) <= 1


def test_same_seed_same_questions(pool, question_set):
    again = [q for _, _, q in questions(3, pool, 20)]
    assert again == [q for _, _, q in question_set[:20]]


def test_candidates_reject_an_unknown_family(question_set):
    with pytest.raises(ValueError, match="color, shape, count, exists"):
        candidates(question_set[0][0], "size")


def test_question_file_in_model_vqa_loader_form(tmp_path):
    path = write_question_set(str(tmp_path), 5, ["astronaut"], 6)
    records = [json.loads(line) for line in open(path)]
    assert [r["question_id"] for r in records] == list(range(6))
    for record in records:
        assert set(record) == {"question_id", "image", "text", "answer", "family"}
        assert (tmp_path / "images" / record["image"]).is_file()


def test_training_and_heldout_photos_are_disjoint():
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    assert not set(photos.TRAIN_PHOTOS) & set(photos.HELDOUT_PHOTOS)
    train, heldout = photos.resolve(["train"]), photos.resolve(["heldout"])
    assert len(set(train)) == len(train) and not set(train) & set(heldout)


def test_unknown_photo_is_named():
    with pytest.raises(ValueError, match="'nophoto'.*accepted names: train, heldout"):
        photos.resolve(["nophoto"])


@pytest.mark.parametrize("prediction, answer, right", [
    ("Red.", "red", True), (" yes ", "yes", True), ("3.", "3", True), ("red circle", "red", False),
    ("no", "yes", False), ("Blue..", "blue", False),
])
def test_scoring_normalisation(prediction, answer, right):
    assert is_correct(prediction, answer) is right
    assert normalize("Purple.") == "purple"


def test_balanced_sets_give_each_family_a_quarter(pool):
    from collections import Counter

    asked = [q for _, _, q in questions(3, pool, 42, balanced=True)]
    counts = Counter(q.family for q in asked)
    assert sorted(counts.values()) == [10, 10, 11, 11]
    exists = counts["exists"]
    assert Counter(q.answer for q in asked if q.family == "exists") == {"yes": (exists + 1) // 2, "no": exists // 2}
