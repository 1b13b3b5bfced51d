"""Document functions of the ``freepruner_photos`` lmms-eval task (loaded by file path)."""

import os

from PIL import Image

TASK_DIR = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [Image.open(os.path.join(TASK_DIR, doc["image"])).convert("RGB")]


def doc_to_text(doc):
    return f"{doc['question']}\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}
