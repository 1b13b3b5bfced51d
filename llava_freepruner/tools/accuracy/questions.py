"""Question files in upstream ``model_vqa_loader`` JSON lines, with answers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

REQUIRED = ("question_id", "image", "text", "answer")


@dataclass(frozen=True)
class Item:
    question_id: str        # as text: ids may be numbers or strings in upstream files
    image: str              # path
    text: str
    answer: str
    family: str


def read(path: str, image_dir: str, limit: Optional[int] = None) -> List[Item]:
    """Every question of ``path`` (the first ``limit``), checked line by line;
    ValueError naming the file and line, or a missing image, before anything runs."""
    if not os.path.isfile(path):
        raise ValueError(f"--questions {path!r}: no such file")
    if not os.path.isdir(image_dir):
        raise ValueError(f"--images {image_dir!r}: no such folder")
    items, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with keys {', '.join(REQUIRED)}")
            missing = [key for key in REQUIRED if key not in record]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)} (required: {', '.join(REQUIRED)})")
            item = Item(str(record["question_id"]), os.path.join(image_dir, str(record["image"])),
                        str(record["text"]), str(record["answer"]), str(record.get("family", "all")))
            if item.question_id in seen:
                raise ValueError(f"{where}: question_id {item.question_id!r} appears twice")
            if not os.path.isfile(item.image):
                raise ValueError(f"{where}: image {item.image!r} does not exist")
            seen.add(item.question_id)
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"--questions {path!r}: no questions in it")
    return items
