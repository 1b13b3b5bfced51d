"""``python -m llava_freepruner.tools.gpucheck.calibration``: time FitPrune's recipe fitting.

The model is a named architecture with random weights (built in-process, no
download), so the fitting time is real while the recipe it finds is not. The
calibration set is generated: deterministic pictures and a few questions in
``model_vqa_loader``'s jsonl format, read back through the fitter's own reader.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

QUESTIONS = (
    "What is in the image?",
    "Describe the picture in detail.",
    "How many objects are there?",
    "What colors dominate the scene?",
)


def write_calibration(folder: str, samples: int) -> str:
    """``samples`` pictures and questions under ``folder``; returns the question file."""
    from ..bench.model import sample_image

    question_file = os.path.join(folder, "questions.jsonl")
    with open(question_file, "w", encoding="utf-8") as handle:
        for i in range(samples):
            name = f"calib-{i:03d}.png"
            sample_image(seed=i).save(os.path.join(folder, name))
            handle.write(json.dumps({"question_id": i, "image": name, "text": QUESTIONS[i % len(QUESTIONS)]}) + "\n")
    return question_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.tools.gpucheck.calibration", description=__doc__)
    parser.add_argument("--random-weights", required=True, help="architecture name (see bench --random-weights)")
    parser.add_argument("--device", required=True, choices=["cpu", "cuda"])
    parser.add_argument("--dtype", required=True, help="float32, float16 or bfloat16")
    parser.add_argument("--samples", type=int, required=True, help="calibration questions (the paper: about 65)")
    parser.add_argument("--reduction", type=float, default=0.6, help="FLOPs reduction target (default 0.6)")
    parser.add_argument("--out", required=True, help="output directory: recipe.json and fit.json")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples {args.samples} is not valid: expected >= 1")

    import torch
    from transformers import LlamaTokenizer

    from ..bench import model as bench_model
    from ..fitprune_fit.fit import fit_loaded, read_questions
    from ...fixtures.tiny import train_tokenizer

    os.makedirs(args.out, exist_ok=True)
    dtype = bench_model.parse_dtype(args.dtype)
    started = time.perf_counter()
    bench = bench_model.build_random(args.random_weights, None, None, args.device, dtype)
    build_s = time.perf_counter() - started
    print(f"calibration: built {args.random_weights} in {build_s:.1f} s", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fitprune-calibration-") as folder:
        train_tokenizer(folder)
        tokenizer = LlamaTokenizer.from_pretrained(folder)
        question_file = write_calibration(folder, args.samples)
        questions = read_questions(question_file, folder, None)
        [recipe] = fit_loaded(bench.model, tokenizer, bench.image_processor, args.random_weights, questions,
                              question_file, folder, [(args.reduction, os.path.join(args.out, "recipe.json"))],
                              progress=False, metadata={"model_path": f"random weights: {args.random_weights}"})
    meta = recipe.metadata
    result = {
        "architecture": args.random_weights, "device": args.device, "dtype": args.dtype,
        "samples": args.samples, "build_s": round(build_s, 2), "fit_s": meta["wall_time_s"],
        "fit_s_per_sample": round(meta["wall_time_s"] / args.samples, 3),
        "target_reduction": args.reduction, "achieved_reduction": meta["achieved_reduction"],
        "alpha": meta["alpha"], "visual_tokens": recipe.num_visual_tokens, "layers": recipe.num_layers,
        "deleted_tokens": sum(recipe.deletions), "torch": torch.__version__,
    }
    with open(os.path.join(args.out, "fit.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
