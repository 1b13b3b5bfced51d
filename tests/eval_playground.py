"""A miniature copy of upstream's ``playground/data/eval`` layout for end-to-end tests.

Every benchmark gets a few questions on small synthetic images and annotation
files in the upstream formats.
"""

import base64
import io
import json
from pathlib import Path

from PIL import Image

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colors = [(200, 30, 30), (30, 160, 60), (40, 60, 200), (220, 200, 40), (120, 40, 160)]
    img = Image.new("RGB", (64 + 16 * seed, 48), colors[seed % len(colors)])
    img.paste((255, 255, 255), (8, 8, 24, 24))
    img.save(path)
    return path


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def build(root: Path, n: int = 3) -> Path:
    root = Path(root)
    ids = range(n)
    # GQA
    _jsonl(root / "gqa/llava_gqa_testdev_balanced.jsonl",
           [{"question_id": f"g{i}", "image": f"g{i}.jpg", "text": "What color is the square?" + SHORT} for i in ids])
    for i in ids:
        _image(root / f"gqa/data/images/g{i}.jpg", i)
    _json(root / "gqa/data/testdev_balanced_questions.json", {f"g{i}": {"answer": "white"} for i in ids})
    # VQAv2 (test-dev questions; the full test split has one more)
    _jsonl(root / "vqav2/llava_vqav2_mscoco_test-dev2015.jsonl",
           [{"question_id": i, "image": f"v{i}.jpg", "text": "What is shown?" + SHORT} for i in ids])
    _jsonl(root / "vqav2/llava_vqav2_mscoco_test2015.jsonl",
           [{"question_id": i, "image": f"v{i}.jpg", "text": "What is shown?" + SHORT} for i in range(n + 1)])
    for i in ids:
        _image(root / f"vqav2/test2015/v{i}.jpg", i)
    # TextVQA
    _jsonl(root / "textvqa/llava_textvqa_val_v051_ocr.jsonl",
           [{"question_id": f"t{i}", "image": f"t{i}.jpg",
             "text": f"What is written {i}?\nReference OCR token: CAT" + SHORT} for i in ids])
    for i in ids:
        _image(root / f"textvqa/train_images/t{i}.jpg", i)
    _json(root / "textvqa/TextVQA_0.5.1_val.json",
          {"data": [{"image_id": f"t{i}", "question": f"What is written {i}?", "answers": ["cat"] * 10} for i in ids]})
    # POPE
    _jsonl(root / "pope/llava_pope_test.jsonl",
           [{"question_id": i, "image": f"p{i}.jpg", "text": "Is there a square in the image?",
             "category": "random"} for i in ids])
    for i in ids:
        _image(root / f"pope/val2014/p{i}.jpg", i)
    _jsonl(root / "pope/coco/coco_pope_random.json", [{"label": "yes" if i % 2 == 0 else "no"} for i in ids])
    # MME: two questions per image
    mme = root / "MME/MME_Benchmark_release_version"
    rows = []
    for i in ids:
        _image(mme / f"existence/{i:03d}.png", i)
        (mme / f"existence/{i:03d}.txt").write_text(
            "Is there a square? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n")
        rows += [{"question_id": f"existence/{i:03d}.png", "image": f"existence/{i:03d}.png",
                  "text": q + SHORT, "category": "existence"} for q in ("Is there a square?", "Is there a cat?")]
    _jsonl(root / "MME/llava_mme.jsonl", rows[:n])
    # ScienceQA: the first problem has no image, as in the real file
    problems, questions = {}, []
    for i in ids:
        problems[f"s{i}"] = {"choices": ["red", "blue"], "answer": i % 2}
        q = {"id": f"s{i}", "conversations": [{"from": "human", "value": "Which color?\nA. red\nB. blue"},
                                              {"from": "gpt", "value": "A"}]}
        if i > 0:
            q["image"] = f"s{i}.png"
            q["conversations"][0]["value"] = "<image>\n" + q["conversations"][0]["value"]
            _image(root / f"scienceqa/images/test/s{i}.png", i)
        questions.append(q)
    _json(root / "scienceqa/llava_test_CQM-A.json", questions)
    _json(root / "scienceqa/problems.json", problems)
    _json(root / "scienceqa/pid_splits.json", {"test": [f"s{i}" for i in ids]})
    # MMBench (dev split: base64 images and answers in a TSV)
    lines = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment"]
    for i in ids:
        buf = io.BytesIO()
        Image.open(_image(root / f"mmbench/_img/{i}.png", i)).save(buf, format="PNG")
        image = base64.b64encode(buf.getvalue()).decode()
        lines.append(f"{i}\tWhich color is the square?\tnan\tred\twhite\tblue\tnan\tB\tcolor\t{image}\tsyn\tperc\tnan")
    (root / "mmbench/mmbench_dev_20230712.tsv").write_text("\n".join(lines) + "\n")
    # SEED-Bench
    _jsonl(root / "seed_bench/llava-seed-bench.jsonl",
           [{"question_id": i, "image": f"SEED-Bench-image/{i}.jpg",
             "text": "Which color?\nA. red\nB. white" + LETTER} for i in ids])
    for i in ids:
        _image(root / f"seed_bench/SEED-Bench-image/{i}.jpg", i)
    _json(root / "seed_bench/SEED-Bench.json",
          {"questions": [{"question_id": str(i), "answer": "B", "data_type": "image", "question_type_id": 1}
                         for i in ids], "question_type": {"color": 1}})
    return root
