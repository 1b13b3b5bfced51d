"""Run every cell over the questions, a batch of questions at a time, resumably.

Per cell, ``OUT/cells/<method>@<ratio>.jsonl`` gets one line per answered
question (flushed after each batch), ``.stats.jsonl`` the plugin's per-image
records and ``.settings.json`` the settings that produced the answers. A rerun
with the same settings, at any batch size (a batch answers as its questions one
at a time), skips what is answered (and drops the stats records of questions
left unanswered by an interruption); a rerun with other settings is refused
before any work; a failing cell leaves the finished ones intact.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Callable, Dict, List, Sequence

import torch

from ..prompts import image_questions_inputs
from ..toy.questions import is_correct
from ..vision.images import open_image
from .cells import Cell
from .plugin import applied, check_pruned, stats_records
from .questions import Item
from .summary import answered, cell_paths, summarize  # noqa: F401 (summarize: re-exported)


class Model:
    """A checkpoint and its processor, loaded on first use (a rerun whose cells
    are all answered only rewrites the report)."""

    def __init__(self, path: str, max_new_tokens: int):
        self.path, self.max_new_tokens = path, max_new_tokens

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(self.path, dtype=torch.float32).eval()

    @cached_property
    def processor(self):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(self.path)

    def inputs(self, items: Sequence[Item]):
        return image_questions_inputs(self.processor, [open_image(item.image) for item in items],
                                      [item.text for item in items])

    @torch.no_grad()
    def answer(self, inputs) -> List[str]:
        output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        answers = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [answer.strip() for answer in answers]

    def visual_tokens(self, inputs) -> List[int]:
        """Image placeholders in each prompt: the unpruned counts."""
        return (inputs["input_ids"] == self.model.config.image_token_id).sum(dim=1).tolist()


class SettingsChanged(ValueError):
    """A resumed cell's answers came from other settings than this run's."""


def _paths(folder: str, cell: Cell) -> Dict[str, str]:
    return cell_paths(folder, cell.name)


def cell_settings(settings: Dict[str, object], cell: Cell) -> Dict[str, object]:
    """The command's ``settings`` (option -> value) that shape this cell's answers, with its recipe."""
    return dict(settings, **{"--fitprune-recipe": cell.config.fitprune_recipe})


def check_resume(folder: str, cell: Cell, settings: Dict[str, object]) -> None:
    """Raise :class:`SettingsChanged` naming each option whose value differs from the
    one that produced the cell's answers (nothing answered yet: nothing to check)."""
    paths = _paths(folder, cell)
    if not answered(paths["answers"]):
        return
    if not os.path.isfile(paths["settings"]):
        raise SettingsChanged(f"{paths['answers']} holds answers but not the settings that produced them (no "
                              f"{os.path.basename(paths['settings'])}): choose another --out, or delete the file "
                              "to answer that cell afresh")
    with open(paths["settings"], encoding="utf-8") as handle:
        recorded = json.load(handle)
    changed = [f"{option} was {recorded.get(option)!r}, now {value!r}"
               for option, value in cell_settings(settings, cell).items() if recorded.get(option) != value]
    if changed:
        raise SettingsChanged(f"the answers of cell {cell.name} in {folder} were made with other settings: "
                              f"{'; '.join(changed)}. Rerun with the earlier values to resume, or choose another "
                              "--out to start afresh")


def _keep_lines(path: str, count: int) -> None:
    """Drop the lines of ``path`` after its first ``count``."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        if len(lines) > count:
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(lines[:count])


def run_cell(model: Model, cell: Cell, items: Sequence[Item], folder: str, settings: Dict[str, object],
             tick: Callable[[], None], batch_size: int = 1) -> List[dict]:
    """Answer the questions of ``items`` not yet answered, ``batch_size`` per
    ``generate()``, with ``settings`` that :func:`check_resume` accepted (checked
    for every cell before the first runs)."""
    paths = _paths(folder, cell)
    answers_path, stats_path = paths["answers"], paths["stats"]
    done = answered(answers_path)
    todo = [item for item in items if item.question_id not in done]
    for _ in range(len(items) - len(todo)):
        tick()
    if todo:
        with open(paths["settings"], "w", encoding="utf-8") as handle:
            json.dump(cell_settings(settings, cell), handle, indent=1)
        # the stats records of a question an interruption left unanswered go: it is answered again
        _keep_lines(stats_path, max((r["stats_records"] for r in done.values()), default=0))
        with applied(cell.config.replace(stats=stats_path)), open(answers_path, "a", encoding="utf-8") as out:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                inputs = model.inputs(batch)
                predictions = model.answer(inputs)
                if start == 0:      # before any answer is kept: a rerun must not reuse unpruned ones
                    check_pruned(cell.config, stats_path)
                written = len(stats_records(stats_path))     # the batch's records included
                for item, prediction, unpruned in zip(batch, predictions, model.visual_tokens(inputs)):
                    record = {"question_id": item.question_id, "family": item.family, "answer": item.answer,
                              "prediction": prediction, "correct": is_correct(prediction, item.answer),
                              "unpruned_tokens": unpruned, "stats_records": written}
                    out.write(json.dumps(record) + "\n")
                    done[item.question_id] = record
                    tick()
                out.flush()
    return [done[item.question_id] for item in items]
