"""Scorers on small hand-made answer/annotation files; expected values computed by hand."""

import json

import pytest

from llava_freepruner.tools.evaluation import scorers
from llava_freepruner.tools.evaluation.scorers import ScoringError


def ans(qid, text, prompt="q"):
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}


# ------------------------------------------------------------------ GQA
def test_gqa_accuracy_and_upload_rows():
    questions = {"q1": {"answer": "cat"}, "q2": {"answer": "yes"}, "q3": {"answer": "red"}}
    answers = [ans("q1", "Cat."), ans("q2", "no"), ans("q3", "red")]
    result = scorers.gqa_accuracy(answers, questions)
    assert result["correct"] == 2 and result["total"] == 3
    assert result["score"] == pytest.approx(200 / 3)
    assert scorers.gqa_predictions(answers)[0] == {"questionId": "q1", "prediction": "cat"}


def test_gqa_unknown_question_is_named():
    with pytest.raises(ScoringError, match="'q9'"):
        scorers.gqa_accuracy([ans("q9", "x")], {"q1": {"answer": "x"}})


# ------------------------------------------------------------------ MME
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture
def mme_root(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "000.txt").write_text(
        "Is there a cat in this image? Please answer yes or no.\tYes\n"
        "Is there a dog in this image? Please answer yes or no.\tNo\n")
    (root / "existence" / "001.txt").write_text(
        "Is there a car in this image? Please answer yes or no.\tYes\n"
        "Is there a bus in this image?  Please answer yes or no.\tNo\n")  # double space, as in the release
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (root / "artwork" / "images").mkdir()
    (root / "artwork" / "questions_answers_YN" / "1.txt").write_text(
        "Is this artwork by X? Please answer yes or no.\tYes\nIs this artwork by Y? Please answer yes or no.\tNo\n")
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "0001.txt").write_text(
        "Is the output 1? Please answer yes or no.\tYes\nIs the output 2? Please answer yes or no.\tNo\n")
    return root


def test_mme_perception_and_cognition_totals(mme_root):
    answers = [
        ans("existence/000.png", "Yes", "Is there a cat in this image?" + SUFFIX),
        ans("existence/000.png", "No, there is not.", "Is there a dog in this image?" + SUFFIX),
        ans("existence/001.png", "yes", "Is there a car in this image?" + SUFFIX),
        ans("existence/001.png", "Yes", "Is there a bus in this image?" + SUFFIX),
        ans("artwork/images/1.jpg", "maybe", "Is this artwork by X?" + SUFFIX),
        ans("artwork/images/1.jpg", "No", "Is this artwork by Y?" + SUFFIX),
        ans("code_reasoning/0001.png", "Yes", "Is the output 1?" + SUFFIX),
        ans("code_reasoning/0001.png", "no", "Is the output 2?" + SUFFIX),
    ]
    result = scorers.mme_scores(answers, scorers.load_mme_ground_truth(mme_root))
    existence = result["categories"]["existence"]
    assert (existence["acc"], existence["acc_plus"], existence["score"]) == (75.0, 50.0, 125.0)
    assert result["categories"]["artwork"]["score"] == 50.0   # acc 50, acc+ 0
    assert result["perception"] == 175.0
    assert result["cognition"] == 200.0
    assert result["score"] == 175.0


def test_mme_reply_parsing():
    assert scorers.mme_yes_no("Yes, it is.") == "yes"
    assert scorers.mme_yes_no("NO") == "no"
    assert scorers.mme_yes_no("I think yes") == "other"  # only the first four characters count


def test_mme_question_without_ground_truth_is_named(mme_root):
    with pytest.raises(ScoringError, match="Is there a horse"):
        scorers.mme_scores([ans("existence/000.png", "Yes", "Is there a horse?" + SUFFIX)],
                           scorers.load_mme_ground_truth(mme_root))


def test_mme_bad_ground_truth_line_is_named(tmp_path):
    (tmp_path / "count").mkdir()
    (tmp_path / "count" / "7.txt").write_text("no tab here\n")
    with pytest.raises(ScoringError, match=r"7.txt:1"):
        scorers.load_mme_ground_truth(tmp_path)


# ------------------------------------------------------------------ VQAv2
def test_vqav2_submission_covers_the_whole_test_split():
    rows = scorers.vqav2_submission([ans(1, "Two."), ans(3, "YES")], [1, 2, 3], str.lower)
    assert rows == [{"question_id": 1, "answer": "two."}, {"question_id": 2, "answer": ""},
                    {"question_id": 3, "answer": "yes"}]


def test_vqav2_submission_with_upstream_answer_processor():
    m4c = pytest.importorskip("llava.eval.m4c_evaluator")
    rows = scorers.vqav2_submission([ans(1, "Two.")], [1], m4c.EvalAIAnswerProcessor())
    assert rows == [{"question_id": 1, "answer": "2"}]


# ------------------------------------------------------------------ multiple choice (MMBench, SEED)
@pytest.mark.parametrize("reply,letter", [("B", "B"), ("B.", "B"), ("(C) dog", "C"), ("A cat", "A"),
                                          ("The answer is A", ""), ("E", "")])
def test_option_letter(reply, letter):
    assert scorers.option_letter(reply, "ABCD") == letter


def test_multiple_choice_accuracy():
    key = {0: "A", 1: "B", 2: "C"}
    result = scorers.multiple_choice_accuracy([ans(0, "A"), ans(1, "C."), ans(2, "C")], key, "ABCD")
    assert result["correct"] == 2 and result["score"] == pytest.approx(200 / 3)


def test_seed_accuracy_by_data_type():
    annotation = {"questions": [{"question_id": "1", "answer": "A", "data_type": "image"},
                                {"question_id": "2", "answer": "B", "data_type": "image"},
                                {"question_id": "v1", "answer": "C", "data_type": "video"}]}
    result = scorers.seed_accuracy([ans(1, "A"), ans("2", "C"), ans("v1", "C")], annotation)
    assert result["by_type"] == {"image": 50.0, "video": 100.0}
    assert result["score"] == 50.0


# ------------------------------------------------------------------ upstream scorers (llava.eval)
def test_pope_via_upstream_eval_pope(tmp_path):
    upstream = pytest.importorskip("llava_freepruner.tools.evaluation.upstream_scorers")
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "coco_pope_random.json").write_text("".join(json.dumps({"label": l}) + "\n" for l in ["yes", "no", "yes", "no"]))
    (coco / "coco_pope_popular.json").write_text("".join(json.dumps({"label": l}) + "\n" for l in ["yes", "no"]))
    questions = {i: {"question_id": i, "category": "random" if i < 4 else "popular"} for i in range(6)}
    answers = [ans(0, "Yes, there is."), ans(1, "No."), ans(2, "no"), ans(3, "Yes"),  # TP TN FN FP
               ans(4, "yes"), ans(5, "There is no dog.")]                              # TP TN
    result = upstream.pope_scores(answers, questions, coco)
    assert result["categories"]["random"]["f1"] == pytest.approx(50.0)
    assert result["categories"]["random"]["acc"] == pytest.approx(50.0)
    assert result["categories"]["popular"]["f1"] == pytest.approx(100.0)
    assert result["score"] == pytest.approx(75.0)
    assert answers[0]["text"] == "Yes, there is."  # upstream rewrites texts; ours are untouched


def test_pope_without_yes_answers_is_a_clear_error(tmp_path):
    upstream = pytest.importorskip("llava_freepruner.tools.evaluation.upstream_scorers")
    (tmp_path / "coco_pope_random.json").write_text('{"label": "no"}\n')
    with pytest.raises(ScoringError, match="POPE random"):
        upstream.pope_scores([ans(0, "no")], {0: {"category": "random"}}, tmp_path)


def test_textvqa_via_upstream_evaluator():
    upstream = pytest.importorskip("llava_freepruner.tools.evaluation.upstream_scorers")
    annotation = {"data": [
        {"image_id": "img1", "question": "What brand is this?", "answers": ["nike"] * 10},
        {"image_id": "img2", "question": "What number is shown?", "answers": ["7"] * 3 + ["8"] * 7},
    ]}
    ocr = "\nReference OCR token: NIKE\nAnswer the question using a single word or phrase."
    answers = [ans("img1", "Nike", "What brand is this?" + ocr), ans("img2", "7", "What number is shown?" + ocr)]
    # img2: leaving out one of the three '7' (3 of 10 cases) leaves 2 matches -> 2/3, else 1 -> 0.9
    assert upstream.textvqa_accuracy(answers, annotation)["score"] == pytest.approx(95.0)


def test_science_qa_via_upstream_script(tmp_path):
    upstream = pytest.importorskip("llava_freepruner.tools.evaluation.upstream_scorers")
    problems = {"p1": {"choices": ["a", "b"], "answer": 0}, "p2": {"choices": ["a", "b"], "answer": 1},
                "p3": {"choices": ["a", "b", "c"], "answer": 2}, "p4": {"choices": ["a", "b"], "answer": 0}}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    answers_file = tmp_path / "answers.jsonl"
    rows = [ans("p1", "A", "<image>\nQ1"), ans("p2", "A", "<image>\nQ2"), ans("p3", "C", "Q3")]
    answers_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = upstream.science_qa_accuracy(answers_file, tmp_path)
    assert result["score"] == pytest.approx(50.0)        # image problems: p1 right, p2 wrong
    assert result["acc_all"] == pytest.approx(200 / 3)   # p4 was not asked, so not counted
    assert result["total"] == 3
