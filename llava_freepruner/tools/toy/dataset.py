"""Question sets: scenes and one question each, as upstream ``model_vqa_loader`` reads them.

Families are drawn uniformly (``balanced``: in shuffled rounds of all four, so each
family has a quarter of the questions, give or take one); ``exists`` questions
alternate between 'yes' and 'no', so exactly half of them (rounded) are 'no'. A scene that has no question of
the drawn kind is replaced by a new one. The same seed and photos give the same
set.
"""

from __future__ import annotations

import json
import os
import random
from typing import Iterator, List, Sequence, Tuple

from PIL import Image

from . import photos as photo_sources
from .questions import FAMILIES, Question, pick
from .scenes import Scene, render, sample_scene


class PhotoPool:
    """Photos loaded once, drawn at random."""

    def __init__(self, names: Sequence[str]):
        self.paths = photo_sources.resolve(names)
        self.images = {path: photo_sources.load(path) for path in self.paths}

    def scene(self, rng: random.Random) -> Tuple[Scene, Image.Image]:
        path = rng.choice(self.paths)
        scene = sample_scene(rng, path, self.images[path])
        return scene, render(scene, self.images[path])


def questions(seed: int, pool: PhotoPool, count: int,
              balanced: bool = False) -> Iterator[Tuple[Scene, Image.Image, Question]]:
    rng = random.Random(seed)
    exists_asked = 0
    round_left: List[str] = []
    for _ in range(count):
        if balanced:
            if not round_left:
                round_left = list(FAMILIES)
                rng.shuffle(round_left)
            family = round_left.pop()
        else:
            family = rng.choice(FAMILIES)
        answer = None
        if family == "exists":
            answer = ("yes", "no")[exists_asked % 2]
            exists_asked += 1
        while True:
            scene, image = pool.scene(rng)
            question = pick(rng, scene, family, answer)
            if question is not None:
                yield scene, image, question
                break


def write_question_set(out: str, seed: int, photos: Sequence[str], count: int, balanced: bool = False) -> str:
    """Write ``out/images/*.png`` and ``out/questions.jsonl``; returns the JSONL path.

    Images are PNG so the shape colours reach the model exactly.
    """
    if count < 1:
        raise ValueError(f"--count {count}: expected at least 1 question")
    pool = PhotoPool(photos)
    image_dir = os.path.join(out, "images")
    os.makedirs(image_dir, exist_ok=True)
    records: List[dict] = []
    for index, (scene, image, question) in enumerate(questions(seed, pool, count, balanced)):
        name = f"scene_{seed}_{index:05d}.png"
        image.save(os.path.join(image_dir, name))
        records.append({"question_id": index, "image": name, "text": question.text,
                        "answer": question.answer, "family": question.family})
    path = os.path.join(out, "questions.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return path
