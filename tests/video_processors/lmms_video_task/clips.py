"""Document functions of the ``freepruner_clips`` lmms-eval task (loaded by file path)."""

import os

TASK_DIR = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [os.path.join(TASK_DIR, doc["video"])]


def doc_to_text(doc):
    return f"{doc['question']}\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"].lower())}
