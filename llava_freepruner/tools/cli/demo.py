"""``python -m llava_freepruner demo``: the unchanged upstream eval, with and without pruning.

Builds a tiny offline LLaVA-1.5 checkpoint (random weights) unless
``--model-path`` is given, writes a few real photos and a question file, runs
``python -m llava.eval.model_vqa_loader`` twice in fresh interpreters (the
plugin activates there through its import hook, exactly as in a user's eval),
and prints visual tokens, LLM prefill time and answers side by side.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from ...runtime.stats import read_jsonl

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
QUESTION = "What is in the image? Answer in a few words."


def add_arguments(parser) -> None:
    parser.add_argument("--model-path", default=None,
                        help="a LLaVA-1.5 checkpoint (e.g. liuhaotian/llava-v1.5-7b); default: build a tiny offline one")
    parser.add_argument("--ratio", type=float, default=0.5, help="FREEPRUNER_RATIO of the pruned run (default 0.5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cpu when CUDA is unavailable")
    parser.add_argument("--workdir", default="demo_out", help="where checkpoint, photos and answers go")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU runs: torch threads of each eval (OMP_NUM_THREADS; default 1, steady timings "
                             "on a shared machine)")


def device_variables(device: str, threads: int) -> dict:
    """What each eval's environment gets for ``device``."""
    return {"FREEPRUNER_DEVICE": "cpu", "OMP_NUM_THREADS": str(threads)} if device == "cpu" else {}


def _write_inputs(workdir: str) -> str:
    import skimage.data
    from PIL import Image

    images = os.path.join(workdir, "images")
    os.makedirs(images, exist_ok=True)
    questions = os.path.join(workdir, "questions.jsonl")
    with open(questions, "w") as handle:
        for i, name in enumerate(PHOTOS):
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(os.path.join(images, f"{name}.png"))
            handle.write(json.dumps({"question_id": i, "image": f"{name}.png", "text": QUESTION}) + "\n")
    return questions


def _run_eval(model_path: str, workdir: str, tag: str, env_vars: dict, max_new_tokens: int) -> tuple:
    answers = os.path.join(workdir, f"answers-{tag}.jsonl")
    stats = os.path.join(workdir, f"stats-{tag}.jsonl")
    for path in (answers, stats):
        if os.path.exists(path):
            os.remove(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    env.update(HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"), FREEPRUNER_STATS=stats, **env_vars)
    command = [
        sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", model_path,
        "--question-file", os.path.join(workdir, "questions.jsonl"),
        "--image-folder", os.path.join(workdir, "images"), "--answers-file", answers,
        "--temperature", "0", "--max_new_tokens", str(max_new_tokens),
    ]
    print(f"$ {' '.join(f'{k}={v}' for k, v in env_vars.items())} python -m llava.eval.model_vqa_loader ...", flush=True)
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise SystemExit(f"upstream eval failed (exit {result.returncode}):\n{result.stdout[-4000:]}")
    for line in result.stdout.splitlines():
        _, said, rest = line.partition("freePruner:")      # the line may follow a progress bar's
        if said:
            print("  " + said + rest)
    with open(answers) as handle:
        texts = [json.loads(line)["text"] for line in handle]
    return texts, read_jsonl(stats)


def run(args) -> int:
    import torch

    if not 0 < args.ratio <= 1:
        print(f"--ratio {args.ratio}: expected 0 < ratio <= 1", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"--threads {args.threads}: expected >= 1", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.workdir, exist_ok=True)
    model_path = args.model_path
    if model_path is None:
        from ...fixtures import tiny

        model_path = tiny.build(os.path.join(args.workdir, "checkpoints"), tiny.DEMO)
        print(f"Built a tiny offline LLaVA-1.5 checkpoint with RANDOM weights: {model_path}")
        print("Its answers are meaningless; token counts and timings are real. "
              "Use --model-path liuhaotian/llava-v1.5-7b for a real model.\n")
    _write_inputs(args.workdir)
    device_vars = device_variables(device, args.threads)
    base_answers, base_stats = _run_eval(model_path, args.workdir, "unpruned", device_vars, args.max_new_tokens)
    pruned_answers, pruned_stats = _run_eval(
        model_path, args.workdir, f"ratio{args.ratio}", {**device_vars, "FREEPRUNER_RATIO": str(args.ratio)},
        args.max_new_tokens,
    )
    print()
    print(_table(base_answers, base_stats, pruned_answers, pruned_stats, args.ratio))
    return 0


def _table(base_answers, base_stats, pruned_answers, pruned_stats, ratio) -> str:
    rows = [
        f"| image | visual tokens | LLM prefill ms (unpruned -> r={ratio}) | answer unpruned | answer r={ratio} |",
        "|---|---|---|---|---|",
    ]
    for name, a0, s0, a1, s1 in zip(PHOTOS, base_answers, base_stats, pruned_answers, pruned_stats):
        rows.append(
            f"| {name} | {s0['tokens_out']} -> {s1['tokens_out']} | "
            f"{s0['llm_prefill_ms']:.1f} -> {s1['llm_prefill_ms']:.1f} | {a0!r} | {a1!r} |"
        )
    # The first image of each run also pays one-off warm-up costs: leave it out of the medians.
    base_ms = statistics.median(s["llm_prefill_ms"] for s in base_stats[1:])
    pruned_ms = statistics.median(s["llm_prefill_ms"] for s in pruned_stats[1:])
    rows.append(f"\nMedian LLM prefill (images 2-{len(base_stats)}): {base_ms:.1f} ms unpruned, "
                f"{pruned_ms:.1f} ms at ratio {ratio} ({base_ms / pruned_ms:.2f}x).")
    return "\n".join(rows)
