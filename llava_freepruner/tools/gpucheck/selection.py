"""``python -m llava_freepruner.tools.gpucheck.selection``: selection correctness on the device.

Two invariants, for every registered vision method that needs no instruction
text, on a random-weight model in the given dtype:

* ratio 1.0 gives features bit-identical to the unpatched model (and, for the first
  method, the LLM's prefill logits too);
* a batch of different pictures keeps, per picture, exactly the tokens a run of
  that picture alone keeps, with features equal up to the dtype's rounding
  (batched matmuls may round differently from single ones).

Writes ``checks.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Features of a batch vs single runs: batched kernels may round differently.
TOLERANCE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}
PICTURES = 3


def _recording(method):
    """``method`` wrapped so that the indices each ``select`` keeps are collected."""
    from ..bench.swap import TimedMethod

    class Recording(TimedMethod):
        def select(self, ctx):
            selections = super().select(ctx)
            self.kept.extend(s.indices.cpu() for s in selections)
            return selections

    recording = Recording(method, time.perf_counter)
    recording.kept = []
    return recording


def run_checks(bench, pictures, ratio: float, tolerance: float):
    import torch

    import llava_freepruner
    from ...runtime import backends
    from ..bench.model import prompt_ids
    from ...config import Config
    from ...runtime.methods import REGISTRY

    model, device = bench.model, bench.device.type
    ids = prompt_ids(bench, 40).to(bench.device)

    def encode(images):
        with torch.inference_mode():
            return model.encode_images(images)

    def prefill_logits(images):
        with torch.inference_mode():
            return model(input_ids=ids.repeat(images.shape[0], 1), images=images).logits

    reference = encode(pictures)
    reference_logits = prefill_logits(pictures)
    checks = []
    # Text-conditioned methods need a CLIP text tower, which random weights do not have.
    for method in [m for m in sorted(REGISTRY) if not REGISTRY[m].needs_instruction]:
        llava_freepruner.apply(Config(vision_method=method, ratio=1.0, device=device))
        try:
            same_features = torch.equal(encode(pictures), reference)
            same_logits = torch.equal(prefill_logits(pictures), reference_logits)
        finally:
            llava_freepruner.remove()
        checks.append({"check": "ratio 1.0 identical to unpatched", "method": method,
                       "passed": same_features and same_logits,
                       "detail": f"features {'bit-identical' if same_features else 'differ'}, "
                                 f"prefill logits {'bit-identical' if same_logits else 'differ'}"})

        llava_freepruner.apply(Config(vision_method=method, ratio=ratio, device=device))
        try:
            recorder = _recording(backends.vision_method())
            backends.set_vision_method(recorder)
            batch = encode(pictures)
            batch_kept, recorder.kept = recorder.kept, []
            singles = torch.cat([encode(pictures[i:i + 1]) for i in range(pictures.shape[0])])
            single_kept = recorder.kept
        finally:
            llava_freepruner.remove()
        same_kept = len(batch_kept) == len(single_kept) and all(torch.equal(a, b) for a, b in zip(batch_kept, single_kept))
        diff = float((batch.float() - singles.float()).abs().max()) if batch.shape == singles.shape else float("inf")
        scale = float(singles.float().abs().max())
        passed = same_kept and diff <= tolerance * max(1.0, scale)
        checks.append({"check": f"batch of {pictures.shape[0]} equals single runs at ratio {ratio}", "method": method,
                       "passed": passed, "detail": f"kept indices {'identical' if same_kept else 'differ'}, "
                                                   f"max feature difference {diff:.3g} (feature scale {scale:.3g})"})
    return checks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.tools.gpucheck.selection", description=__doc__)
    parser.add_argument("--random-weights", required=True, help="architecture name (see bench --random-weights)")
    parser.add_argument("--device", required=True, choices=["cpu", "cuda"])
    parser.add_argument("--dtype", required=True, choices=sorted(TOLERANCE))
    parser.add_argument("--ratio", type=float, default=0.5, help="ratio of the batch check (default 0.5)")
    parser.add_argument("--out", required=True, help="output directory: checks.json")
    args = parser.parse_args(argv)
    if not 0.0 < args.ratio < 1.0:
        parser.error(f"--ratio {args.ratio} is not valid: expected 0 < r < 1 (ratio 1.0 is always checked)")

    from llava.mm_utils import process_images

    from ..bench import model as bench_model

    bench = bench_model.build_random(args.random_weights, None, None, args.device, bench_model.parse_dtype(args.dtype))
    if bench.model.config.image_aspect_ratio != "pad":
        parser.error(f"--random-weights {args.random_weights}: expected a LLaVA-1.5 layout (image_aspect_ratio pad)")
    images = [bench_model.sample_image(seed=i) for i in range(PICTURES)]
    pictures = process_images(images, bench.image_processor, bench.model.config).to(bench.device, bench.dtype)
    checks = run_checks(bench, pictures, args.ratio, TOLERANCE[args.dtype])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "checks.json"), "w") as handle:
        json.dump({"architecture": args.random_weights, "device": args.device, "dtype": args.dtype,
                   "checks": checks}, handle, indent=2)
    for c in checks:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']:45} {c['method']:12} {c['detail']}")
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
