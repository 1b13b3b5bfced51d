"""Scorers that run upstream LLaVA's own evaluation code (``llava.eval.*``).

Upstream's scorers print their results (and ScienceQA's is a ``__main__``
script); these wrappers call them unchanged and return the numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from .scorers import ScoringError

_POPE_FIELDS = {"Accuracy": "acc", "Precision": "precision", "Recall": "recall",
                "F1 score": "f1", "Yes ratio": "yes_ratio"}


def pope_scores(answers: Sequence[dict], questions: Mapping, annotation_dir: Path) -> dict:
    """POPE per category via ``llava.eval.eval_pope.eval_pope``; ``score`` is the mean F1 in %.

    ``questions`` maps question id -> question (with ``category``); the labels
    of ``coco_pope_<category>.json`` are matched to answers in order, as upstream does.
    """
    from llava.eval.eval_pope import eval_pope

    categories = {}
    for label_file in sorted(Path(annotation_dir).glob("coco_pope_*.json")):
        category = label_file.stem[len("coco_pope_"):]
        # eval_pope rewrites answer texts in place: give it copies.
        selected = [copy.deepcopy(a) for a in answers if questions[a["question_id"]]["category"] == category]
        if not selected:
            continue
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                eval_pope(selected, str(label_file))
        except ZeroDivisionError:
            raise ScoringError(
                f"POPE {category}: precision/recall undefined (no 'yes' predictions or no positive "
                f"labels among {len(selected)} answers)"
            ) from None
        found = dict(re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (\S+)$",
                                printed.getvalue(), re.M))
        categories[category] = {_POPE_FIELDS[k]: 100.0 * float(v) for k, v in found.items()}
        categories[category]["total"] = len(selected)
    if not categories:
        raise ScoringError(f"POPE: no coco_pope_<category>.json in {annotation_dir} matches any answer")
    f1 = [c["f1"] for c in categories.values()]
    acc = [c["acc"] for c in categories.values()]
    return {"score": sum(f1) / len(f1), "acc": sum(acc) / len(acc), "categories": categories}


def textvqa_accuracy(answers: Sequence[dict], annotation: Mapping) -> dict:
    """TextVQA accuracy with upstream's question matching and ``TextVQAAccuracyEvaluator``.

    ``annotation`` is ``TextVQA_0.5.1_val.json``.
    """
    from llava.eval.eval_textvqa import prompt_processor
    from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

    by_key = {(item["image_id"], item["question"].lower()): item for item in annotation["data"]}
    pred_list = []
    for a in answers:
        key = (a["question_id"], prompt_processor(a["prompt"]))
        if key not in by_key:
            raise ScoringError(f"TextVQA: no annotation for image {key[0]!r} question {key[1]!r}")
        pred_list.append({"pred_answer": a["text"], "gt_answers": by_key[key]["answers"]})
    accuracy = TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    return {"score": 100.0 * accuracy, "total": len(pred_list)}


def science_qa_accuracy(answers_file: Path, base_dir: Path, split: str = "test") -> dict:
    """ScienceQA via ``llava.eval.eval_science_qa``, over the answered problems only.

    Upstream counts every problem of the split; a split restricted to the
    answered ids makes partial runs score what they asked. ``score`` is the
    accuracy on problems with an image (ScienceQA-IMG).
    """
    answered = [json.loads(line)["question_id"] for line in open(answers_file) if line.strip()]
    with tempfile.TemporaryDirectory(prefix="sqa_eval_") as tmp:
        tmp = Path(tmp)
        (tmp / "problems.json").symlink_to(Path(base_dir, "problems.json").resolve())
        (tmp / "pid_splits.json").write_text(json.dumps({split: answered}))
        output, result = tmp / "output.json", tmp / "result.json"
        argv = ["eval_science_qa", "--base-dir", str(tmp), "--result-file", str(answers_file),
                "--output-file", str(output), "--output-result", str(result), "--split", split]
        saved_argv = sys.argv
        sys.argv = argv
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                runpy.run_module("llava.eval.eval_science_qa", run_name="__main__")
        except ZeroDivisionError:
            raise ScoringError(f"ScienceQA: none of the {len(answered)} answered problems has an image") from None
        finally:
            sys.argv = saved_argv
        graded = json.loads(output.read_text())
        overall = json.loads(result.read_text())
    image_correct = sum(r["is_multimodal"] for r in graded["correct"])
    image_total = image_correct + sum(r["is_multimodal"] for r in graded["incorrect"])
    return {"score": 100.0 * image_correct / image_total, "acc_all": overall["acc"],
            "image_total": image_total, "total": overall["count"]}
