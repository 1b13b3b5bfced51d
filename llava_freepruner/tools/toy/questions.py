"""The four question families on a scene, and how answers are scored."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional

from .scenes import Scene

SUFFIX = "\nAnswer the question using a single word or phrase."
FAMILIES = ("color", "shape", "count", "exists")


@dataclass(frozen=True)
class Question:
    family: str
    question: str       # without SUFFIX
    answer: str

    @property
    def text(self) -> str:
        return self.question + SUFFIX


def candidates(scene: Scene, family: str, answer: Optional[str] = None) -> List[Question]:
    """Every question of ``family`` with a unique answer on ``scene``; for
    ``exists``, ``answer`` ('yes'/'no') restricts them to that answer."""
    shapes = Counter(o.shape for o in scene.objects)
    colors = Counter(o.color for o in scene.objects)
    present = {(o.shape, o.color) for o in scene.objects}
    if family == "color":
        return [Question(family, f"What color is the {o.shape}?", o.color)
                for o in scene.objects if shapes[o.shape] == 1]
    if family == "shape":
        return [Question(family, f"What shape is the {o.color} object?", o.shape)
                for o in scene.objects if colors[o.color] == 1]
    if family == "count":
        return [Question(family, "How many objects are there?", str(len(scene.objects)))]
    if family == "exists":
        # 'no' questions pair a colour and a shape that are both in the scene, never together.
        pairs = [(s, c) for s in sorted(shapes) for c in sorted(colors)]
        found = [Question(family, f"Is there a {c} {s}?", "yes" if (s, c) in present else "no") for s, c in pairs]
        return [q for q in found if answer is None or q.answer == answer]
    raise ValueError(f"question family {family!r}: expected one of {', '.join(FAMILIES)}")


def pick(rng: random.Random, scene: Scene, family: str, answer: Optional[str] = None) -> Optional[Question]:
    """A random question of ``family`` on ``scene``, or None when it has none."""
    found = candidates(scene, family, answer)
    return rng.choice(found) if found else None


def normalize(answer: str) -> str:
    """Scoring form: lower case, surrounding space and one final period removed."""
    text = answer.strip().lower()
    return text[:-1].strip() if text.endswith(".") else text


def is_correct(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)
