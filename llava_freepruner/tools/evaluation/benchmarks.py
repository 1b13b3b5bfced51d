"""The upstream LLaVA-1.5 benchmarks: data layout, entry point and scorer of each.

Paths are relative to the eval data root (upstream: ``playground/data/eval``)
and follow upstream's ``scripts/v1_5/eval/*.sh``. Adding a benchmark means
adding one :class:`Benchmark` entry and, if upstream has no scorer, one
function in :mod:`llava_freepruner.tools.evaluation.scorers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import scorers


class MissingDataError(FileNotFoundError):
    """A file or folder of a benchmark's data layout is not there."""


@dataclass(frozen=True)
class ScoreInputs:
    """What a scorer gets: the merged answers and where the benchmark data lives."""

    answers: List[dict]
    answers_file: Path
    root: Path
    run_name: str
    questions: List[dict]


@dataclass(frozen=True)
class Benchmark:
    name: str
    entry: str                         # upstream module run with ``python -m``
    question_file: str
    answers_dir: str
    score: Callable[[ScoreInputs], dict]
    image_folder: Optional[str] = None
    scorer_files: Tuple[str, ...] = ()  # annotation files the scorer reads
    entry_args: Tuple[str, ...] = ()
    notes: str = ""

    @property
    def question_format(self) -> str:
        return Path(self.question_file).suffix.lstrip(".")

    def required_paths(self, root: Path, score: bool = True) -> List[Path]:
        names = [self.question_file] + ([self.image_folder] if self.image_folder else [])
        return [Path(root, n) for n in names + (list(self.scorer_files) if score else [])]

    def check_data(self, root: Path, score: bool = True) -> None:
        """Raise :class:`MissingDataError` naming every missing file of the layout."""
        missing = [p for p in self.required_paths(root, score) if not p.exists()]
        if missing:
            raise MissingDataError(
                f"{self.name}: missing benchmark data: {', '.join(str(p) for p in missing)}. "
                f"Expected upstream's layout under the eval root {root} (see eval_scripts/README.md)."
            )


# ------------------------------------------------------------- questions
def load_questions(path: Path) -> List[dict]:
    """Questions in file order: JSONL (model_vqa_loader), JSON list (ScienceQA) or TSV (MMBench)."""
    path = Path(path)
    suffix = path.suffix
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if suffix == ".tsv":
        import pandas as pd  # upstream's MMBench entry point needs pandas too

        return pd.read_table(path).to_dict("records")
    raise ValueError(f"question file {path}: unknown format {suffix!r}; accepted: .jsonl, .json, .tsv")


def question_id(question: dict) -> object:
    """The id an upstream entry point writes as ``question_id`` for this question."""
    for key in ("question_id", "id", "index"):
        if key in question:
            return question[key]
    raise ValueError(f"question without question_id/id/index: {str(question)[:200]}")


def write_questions(path: Path, questions: Sequence[dict], like: Path) -> None:
    """Write ``questions`` in the format of the question file ``like``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = Path(like).suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(list(questions)), encoding="utf-8")
    elif suffix == ".tsv":
        import pandas as pd

        pd.DataFrame(list(questions)).to_csv(path, sep="\t", index=False)
    else:
        raise ValueError(f"question file {like}: unknown format {suffix!r}; accepted: .jsonl, .json, .tsv")


# ------------------------------------------------------------- scorers
def _read_json(root: Path, name: str):
    return json.loads(Path(root, name).read_text(encoding="utf-8"))


def _score_gqa(x: ScoreInputs) -> dict:
    upload = x.answers_file.with_name(x.run_name + ".testdev_balanced_predictions.json")
    upload.write_text(json.dumps(scorers.gqa_predictions(x.answers)))
    result = scorers.gqa_accuracy(x.answers, _read_json(x.root, GQA_QUESTIONS))
    return {**result, "upload_file": str(upload)}


def _score_vqav2(x: ScoreInputs) -> dict:
    from llava.eval.m4c_evaluator import EvalAIAnswerProcessor

    test_ids = [q["question_id"] for q in load_questions(Path(x.root, VQAV2_TEST_SPLIT))]
    rows = scorers.vqav2_submission(x.answers, test_ids, EvalAIAnswerProcessor())
    upload = Path(x.root, "vqav2/answers_upload", VQAV2_SPLIT, x.run_name + ".json")
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_text(json.dumps(rows))
    return {"score": None, "answered": len(x.answers), "upload_rows": len(rows), "upload_file": str(upload),
            "note": "VQAv2 test-dev is scored by the EvalAI server: upload upload_file"}


def _score_textvqa(x: ScoreInputs) -> dict:
    from .upstream_scorers import textvqa_accuracy

    return textvqa_accuracy(x.answers, _read_json(x.root, "textvqa/TextVQA_0.5.1_val.json"))


def _score_pope(x: ScoreInputs) -> dict:
    from .upstream_scorers import pope_scores

    questions = {q["question_id"]: q for q in x.questions}
    return pope_scores(x.answers, questions, Path(x.root, "pope/coco"))


def _score_mme(x: ScoreInputs) -> dict:
    return scorers.mme_scores(x.answers, scorers.load_mme_ground_truth(Path(x.root, MME_IMAGES)))


def _score_sqa(x: ScoreInputs) -> dict:
    from .upstream_scorers import science_qa_accuracy

    return science_qa_accuracy(x.answers_file, Path(x.root, "scienceqa"))


def _score_mmbench(x: ScoreInputs) -> dict:
    import pandas as pd

    table = pd.DataFrame(x.questions)
    predictions = {a["question_id"]: a["text"] for a in x.answers}
    upload_table = table.drop(columns=[c for c in MMBENCH_UPLOAD_DROP if c in table.columns])
    options = [c for c in "ABCD" if c in upload_table.columns]
    position = upload_table.columns.get_loc(options[-1]) + 1 if options else len(upload_table.columns)
    upload_table.insert(position, "prediction", [predictions.get(i) for i in table["index"]])
    upload = Path(x.root, "mmbench/answers_upload", MMBENCH_SPLIT, x.run_name + ".xlsx")
    upload.parent.mkdir(parents=True, exist_ok=True)
    try:
        upload_table.to_excel(upload, index=False, engine="openpyxl")
    except ImportError as err:
        raise ImportError(f"MMBench upload file {upload} needs openpyxl: pip install openpyxl ({err})") from err
    result = {"score": None, "upload_file": str(upload),
              "note": "MMBench is scored by its server (CircularEval): upload upload_file"}
    if "answer" in table.columns:  # the dev split ships answers: single-pass accuracy
        key = dict(zip(table["index"], table["answer"]))
        result.update(scorers.multiple_choice_accuracy(x.answers, key, "ABCD"))
        result["note"] = "score: dev accuracy, single pass (the server's CircularEval is stricter)"
    return result


def _score_seed(x: ScoreInputs) -> dict:
    return scorers.seed_accuracy(x.answers, _read_json(x.root, "seed_bench/SEED-Bench.json"))


GQA_QUESTIONS = "gqa/data/testdev_balanced_questions.json"
VQAV2_SPLIT = "llava_vqav2_mscoco_test-dev2015"
VQAV2_TEST_SPLIT = "vqav2/llava_vqav2_mscoco_test2015.jsonl"
MME_IMAGES = "MME/MME_Benchmark_release_version"
MMBENCH_SPLIT = "mmbench_dev_20230712"
MMBENCH_UPLOAD_DROP = ("hint", "category", "source", "image", "comment", "l2-category")
_LOADER = "llava.eval.model_vqa_loader"

BENCHMARKS: Dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gqa", _LOADER, "gqa/llava_gqa_testdev_balanced.jsonl", "gqa/answers/llava_gqa_testdev_balanced",
              _score_gqa, image_folder="gqa/data/images", scorer_files=(GQA_QUESTIONS,)),
    Benchmark("vqav2", _LOADER, f"vqav2/{VQAV2_SPLIT}.jsonl", f"vqav2/answers/{VQAV2_SPLIT}", _score_vqav2,
              image_folder="vqav2/test2015", scorer_files=(VQAV2_TEST_SPLIT,)),
    Benchmark("textvqa", _LOADER, "textvqa/llava_textvqa_val_v051_ocr.jsonl", "textvqa/answers", _score_textvqa,
              image_folder="textvqa/train_images", scorer_files=("textvqa/TextVQA_0.5.1_val.json",)),
    Benchmark("pope", _LOADER, "pope/llava_pope_test.jsonl", "pope/answers", _score_pope,
              image_folder="pope/val2014", scorer_files=("pope/coco",)),
    Benchmark("mme", _LOADER, "MME/llava_mme.jsonl", "MME/answers", _score_mme, image_folder=MME_IMAGES),
    Benchmark("sqa", "llava.eval.model_vqa_science", "scienceqa/llava_test_CQM-A.json", "scienceqa/answers",
              _score_sqa, image_folder="scienceqa/images/test", scorer_files=("scienceqa/problems.json",),
              entry_args=("--single-pred-prompt",)),
    Benchmark("mmbench", "llava.eval.model_vqa_mmbench", f"mmbench/{MMBENCH_SPLIT}.tsv",
              f"mmbench/answers/{MMBENCH_SPLIT}", _score_mmbench, entry_args=("--single-pred-prompt",)),
    Benchmark("seed", _LOADER, "seed_bench/llava-seed-bench.jsonl", "seed_bench/answers", _score_seed,
              image_folder="seed_bench", scorer_files=("seed_bench/SEED-Bench.json",)),
)}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; accepted: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
