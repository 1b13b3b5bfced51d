"""Benchmark scorers that upstream LLaVA does not ship as importable code.

Pure functions over answer records (the dicts ``llava.eval.model_vqa_*``
write: ``question_id``, ``prompt``, ``text``, ...) and annotation data. Scores
are percentages. Scorers that wrap upstream's own code live in
:mod:`llava_freepruner.tools.evaluation.upstream_scorers`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Sequence


class ScoringError(ValueError):
    """Answers and annotations that do not fit together."""


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


# ---------------------------------------------------------------- GQA
def gqa_prediction(text: str) -> str:
    """The normalisation upstream applies before GQA's official eval (strip a final '.', lower)."""
    return text.rstrip(".").lower()


def gqa_predictions(answers: Iterable[dict]) -> list:
    """Rows of GQA's ``<tier>_predictions.json`` (for the official ``eval.py``)."""
    return [{"questionId": a["question_id"], "prediction": gqa_prediction(a["text"])} for a in answers]


def gqa_accuracy(answers: Sequence[dict], questions: Mapping[str, dict]) -> dict:
    """Exact-match accuracy over the answered questions of a GQA tier.

    ``questions`` is the tier's ``*_questions.json`` (id -> question with ``answer``).
    """
    correct = 0
    for a in answers:
        qid = str(a["question_id"])
        if qid not in questions:
            raise ScoringError(f"GQA question id {qid!r} is not in the annotation file")
        correct += gqa_prediction(a["text"]) == questions[qid]["answer"]
    return {"score": _percent(correct, len(answers)), "correct": correct, "total": len(answers)}


# ---------------------------------------------------------------- MME
MME_PERCEPTION = ("existence", "count", "position", "color", "posters",
                  "celebrity", "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_MME_INSTRUCTIONS = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


def mme_question_key(question: str) -> str:
    """The question without answer-format instructions, whitespace collapsed."""
    for instruction in _MME_INSTRUCTIONS:
        question = question.replace(instruction, " ")
    return " ".join(question.split())


def mme_yes_no(text: str) -> str:
    """MME's reading of a reply: 'yes', 'no' or 'other' (judged on its first four characters)."""
    reply = text.lower().strip().replace(".", "")
    if reply in ("yes", "no"):
        return reply
    head = reply[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def load_mme_ground_truth(root: Path) -> Dict[tuple, Dict[str, str]]:
    """``{(category, image stem): {question key: 'yes'|'no'}}`` from the MME release folder.

    Categories keep their question files either next to the images or in a
    ``questions_answers_YN`` sub-folder; each line is ``question<TAB>answer``.
    """
    root = Path(root)
    truth: Dict[tuple, Dict[str, str]] = defaultdict(dict)
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        qa_dir = category_dir / "questions_answers_YN"
        qa_dir = qa_dir if qa_dir.is_dir() else category_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for number, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 2:
                    raise ScoringError(f"{txt}:{number}: expected 'question<TAB>answer', got {line!r}")
                truth[category_dir.name, txt.stem][mme_question_key(fields[0])] = fields[1].strip().lower()
    if not truth:
        raise ScoringError(f"no MME question files (*.txt) found under {root}")
    return dict(truth)


def mme_scores(answers: Sequence[dict], truth: Mapping[tuple, Mapping[str, str]]) -> dict:
    """MME per-category score (accuracy + accuracy+, each in %) and the two totals.

    accuracy+ counts images whose questions are all answered correctly.
    ``score`` is the perception total, the number LLaVA-1.5 reports.
    """
    per_image: Dict[tuple, list] = defaultdict(list)
    for a in answers:
        category = a["question_id"].split("/")[0]
        key = (category, Path(a["question_id"]).stem)
        question = mme_question_key(a["prompt"])
        expected = truth.get(key, {}).get(question)
        if expected is None:
            raise ScoringError(f"MME: no ground truth for image {a['question_id']!r}, question {question!r}")
        per_image[key].append(mme_yes_no(a["text"]) == expected)
    categories: Dict[str, dict] = {}
    for (category, _), results in sorted(per_image.items()):
        c = categories.setdefault(category, {"questions": 0, "correct": 0, "images": 0, "images_all_correct": 0})
        c["questions"] += len(results)
        c["correct"] += sum(results)
        c["images"] += 1
        c["images_all_correct"] += all(results)
    for c in categories.values():
        c["acc"] = _percent(c["correct"], c["questions"])
        c["acc_plus"] = _percent(c["images_all_correct"], c["images"])
        c["score"] = c["acc"] + c["acc_plus"]
    perception = sum(categories[name]["score"] for name in MME_PERCEPTION if name in categories)
    cognition = sum(categories[name]["score"] for name in MME_COGNITION if name in categories)
    return {"score": perception, "perception": perception, "cognition": cognition, "categories": categories}


# ---------------------------------------------------------------- VQAv2
def vqav2_submission(answers: Iterable[dict], question_ids: Sequence, normalize: Callable[[str], str]) -> list:
    """EvalAI upload rows for every id of the test split; unanswered ids get ''."""
    texts = {a["question_id"]: a["text"] for a in answers}
    return [{"question_id": qid, "answer": normalize(texts[qid]) if qid in texts else ""} for qid in question_ids]


# ---------------------------------------------------------------- multiple choice
def option_letter(text: str, letters: Sequence[str]) -> str:
    """The option letter a reply names ('B', 'B.', 'B) cat'), or '' when it names none."""
    reply = text.strip()
    if reply in letters:
        return reply
    match = re.match(r"^\(?([A-Z])[.):]?(\s|$)", reply)
    if match and match.group(1) in letters:
        return match.group(1)
    return ""


def multiple_choice_accuracy(answers: Sequence[dict], answer_key: Mapping, letters: Sequence[str]) -> dict:
    """Accuracy of option letters against ``answer_key`` (question id -> correct letter)."""
    correct = 0
    for a in answers:
        if a["question_id"] not in answer_key:
            raise ScoringError(f"question id {a['question_id']!r} has no correct answer in the annotations")
        correct += option_letter(a["text"], letters) == answer_key[a["question_id"]]
    return {"score": _percent(correct, len(answers)), "correct": correct, "total": len(answers)}


def seed_accuracy(answers: Sequence[dict], annotation: Mapping) -> dict:
    """SEED-Bench accuracy by data type (exact reply == answer letter, as upstream).

    ``annotation`` is ``SEED-Bench.json``; ``score`` is the image accuracy.
    """
    questions = {str(q["question_id"]): q for q in annotation["questions"]}
    counts: Dict[str, list] = defaultdict(lambda: [0, 0])
    for a in answers:
        q = questions.get(str(a["question_id"]))
        if q is None:
            raise ScoringError(f"SEED question id {a['question_id']!r} is not in the annotation file")
        counts[q["data_type"]][0] += a["text"].strip() == q["answer"]
        counts[q["data_type"]][1] += 1
    by_type = {t: _percent(c, n) for t, (c, n) in sorted(counts.items())}
    return {"score": by_type.get("image", 0.0), "by_type": by_type,
            "total": sum(n for _, n in counts.values())}
