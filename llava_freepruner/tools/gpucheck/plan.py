"""What the GPU check runs: the sizes of each mode and the list of sections.

A section is one command in its own process. Sections that need a feature the
bench may not have yet (another backend, video, 4-bit) look for its option in
``bench --help`` and are skipped, with the reason recorded, when it is absent.
Each section carries an estimate of its minutes on one H100/H200, so that a call
of a few minutes starts only what fits and a later call (``--resume``, or
``--sections``) runs the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..bench.archs import hf_name


@dataclass(frozen=True)
class Profile:
    mode: str
    device: str
    dtype: str
    v15: str               # --random-weights of the LLaVA-1.5 sections
    v16: str               # and of the LLaVA-1.6 (anyres) section
    ratios: str
    repeats: int
    warmup: int
    new_tokens: int
    batches: Tuple[int, ...]   # a batch section each
    fit_samples: int
    budget_s: float        # no section starts after this many seconds (the install included)
    min_start_s: float     # nor with less than this left
    estimates: bool        # a section starts only when its estimated minutes fit in what is left
    videos: Tuple[Tuple[str, int], ...] = ()   # (--random-weights, --video FRAMES) of the video sections
    qwen: Tuple[str, ...] = ()     # --random-weights of the Qwen-VL section and its layer options


GPU = Profile("gpu", "cuda", "float16", "llava-v1.5-7b", "llava-v1.6-7b", "1.0,0.5,0.25,0.11",
              repeats=10, warmup=3, new_tokens=8, batches=(8, 32), fit_samples=32, budget_s=420, min_start_s=30,
              estimates=True, videos=(("video-llava-7b-hf", 8), ("llava-next-video-7b-hf", 32)),
              qwen=("qwen2.5-vl-7b",))
CPU_SMOKE = Profile("cpu-smoke", "cpu", "float32", "tiny-llava-v1.5", "tiny-llava-v1.6", "1.0,0.5,0.25,0.11",
                    repeats=1, warmup=0, new_tokens=2, batches=(2,), fit_samples=3, budget_s=900, min_start_s=5,
                    estimates=False, videos=(("tiny-video-llava-hf", 4),),
                    qwen=("tiny-qwen2.5-vl", "--llm-layers", "2", "--vision-layers", "4"))
# The Qwen-VL section: freePruner and VisionZip (the baseline with official Qwen2.5-VL code), next to
# the unpatched model and the oracle, at ratios 1.0 and 0.5, in bfloat16 (the checkpoints' dtype) on CUDA.
QWEN_SECTION = "qwen2.5-vl-7b"
QWEN_METHODS = "none,freepruner,visionzip"

# Estimated minutes of each section on one H100/H200 at the GPU sizes (model build included, install
# not): from the first run's times (3 repeats after 1 warm-up) scaled to 10 repeats after 3; rough.
MINUTES = {"selection": 0.5, "bench-v1.5": 3.5, "batch-8": 2.5, "batch-32": 5.5, "fitprune-fit": 1.7,
           "anyres-v1.6": 3.0, "transformers": 3.5, "video-llava-7b-hf": 3.5, "llava-next-video-7b-hf": 4.5,
           "quant-4bit": 3.0, QWEN_SECTION: 3.0}     # Qwen: not measured yet (build + 7 rows x 13 calls)
PENDING = ("not started", "not run yet")    # what --resume runs again

UPSTREAM, HOST = "upstream", "host"     # environments: llava's pinned stack, or the machine's own transformers
BENCH, CHECKS, FIT = "bench", "checks", "fit"   # what a section leaves in its folder


@dataclass(frozen=True)
class Section:
    name: str                       # also its folder under OUT_DIR and its log's name
    title: str
    kind: str                       # BENCH, CHECKS or FIT
    env: str                        # UPSTREAM or HOST
    args: Optional[List[str]]       # python arguments; None when skipped
    skipped: Optional[str] = None   # why it does not run

    @property
    def minutes(self) -> float:
        """Estimated minutes on one H100/H200 at the GPU sizes."""
        return MINUTES.get(self.name, 3.0)


def _bench(p: Profile, folder: str, arch: str, ratios: str, *extra: str, methods: str = "all",
           dtype: Optional[str] = None) -> List[str]:
    return ["-m", "llava_freepruner", "bench", "--random-weights", arch, "--methods", methods, "--ratios", ratios,
            "--repeats", str(p.repeats), "--warmup", str(p.warmup), "--new-tokens", str(p.new_tokens),
            "--device", p.device, "--dtype", dtype or p.dtype, "--keep-going", *extra, "--out", folder]


def _needs(option: str, bench_help: str) -> Optional[str]:
    # argparse wraps help lines, also at hyphens inside a name: compare without the white space
    return None if option in "".join(bench_help.split()) else \
        f"not available in this version (bench --help has no {option})"


def _host_serves_transformers_backend(version: Optional[str]) -> Optional[str]:
    """Why the machine's own transformers cannot run the transformers backend (None: it can)."""
    from ...runtime.backends.transformers_llava import check_version
    from ...config import ConfigError

    try:
        check_version(version or "0")
    except ConfigError as err:
        return f"not available here: {err}"
    return None


def sections(p: Profile, out_dir: str, bench_help: str, host_transformers: Optional[str]) -> List[Section]:
    """The sections in the order they run: the checks and the main table first.
    ``host_transformers``: the version of the machine's own transformers (HOST sections)."""
    def folder(name):
        return os.path.join(out_dir, name)

    def optional(name, title, env, option, args):
        reason = _needs(option, bench_help)
        if reason is None and env == HOST:
            reason = _host_serves_transformers_backend(host_transformers)
        return Section(name, title, BENCH, env, None if reason else args, reason)

    backend = ["--backend", "transformers"]
    return [
        Section("selection", f"Selection correctness ({p.dtype}): ratio 1.0 identical, batch equals single", CHECKS,
                UPSTREAM, ["-m", "llava_freepruner.tools.gpucheck.selection", "--random-weights", p.v15, "--device",
                           p.device, "--dtype", p.dtype, "--out", folder("selection")]),
        Section("bench-v1.5", f"Upstream backend, {p.v15} (random weights), every method", BENCH, UPSTREAM,
                _bench(p, folder("bench-v1.5"), p.v15, p.ratios)),
        *(Section(f"batch-{b}", f"Batch {b} throughput, {p.v15}", BENCH, UPSTREAM,
                  _bench(p, folder(f"batch-{b}"), p.v15, "1.0,0.5", "--batch-size", str(b))) for b in p.batches),
        Section("fitprune-fit", f"FitPrune: time to fit a recipe on {p.v15} ({p.fit_samples} samples)", FIT, UPSTREAM,
                ["-m", "llava_freepruner.tools.gpucheck.calibration", "--random-weights", p.v15, "--device", p.device,
                 "--dtype", p.dtype, "--samples", str(p.fit_samples), "--out", folder("fitprune-fit")]),
        Section("anyres-v1.6", f"LLaVA-1.6 anyres, {p.v16} (random weights)", BENCH, UPSTREAM,
                _bench(p, folder("anyres-v1.6"), p.v16, "1.0,0.5")),
        optional("transformers", f"Transformers backend, {p.v15}", HOST, "--backend",
                 _bench(p, folder("transformers"), hf_name(p.v15), "1.0,0.5", *backend)),
        *(optional(name, f"Transformers backend, {name} (random weights), {frames}-frame video, "
                   "frame and temporal modes", HOST, "--video",
                   _bench(p, folder(name), name, "1.0,0.5", *backend, "--video", str(frames)))
          for name, frames in p.videos),
        optional(QWEN_SECTION, f"Transformers backend, Qwen-VL: {p.qwen[0]} (random weights"
                 + (", " + " ".join(p.qwen[1:]) if p.qwen[1:] else ", full depth") + "), freepruner and visionzip",
                 HOST, p.qwen[0],
                 _bench(p, folder(QWEN_SECTION), p.qwen[0], "1.0,0.5", *backend, *p.qwen[1:], methods=QWEN_METHODS,
                        dtype="bfloat16" if p.device == "cuda" else None)),
        optional("quant-4bit", f"4-bit language model, {p.v15}", UPSTREAM, "--quant",
                 _bench(p, folder("quant-4bit"), p.v15, "1.0,0.5", "--quant", "4bit")),
    ]


def choose(all_sections: Sequence[Section], names: Optional[Sequence[str]], previous: Optional[Dict[str, str]]
           ) -> List[Section]:
    """The sections a call runs, in plan order: those named (``--sections``), else, with the
    statuses of the calls before (``previous``, by name: ``--resume``), those that never ran
    or did not start, else every one."""
    known = [s.name for s in all_sections]
    if names is not None:
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise ValueError(f"--sections {','.join(names)!r}: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                             f"expected some of {', '.join(known)}")
        return [s for s in all_sections if s.name in names]
    if previous is not None:
        return [s for s in all_sections if previous.get(s.name, PENDING[-1]) in PENDING]
    return list(all_sections)


def listing(all_sections: Sequence[Section]) -> str:
    """The sections with their estimated minutes, one a line."""
    width = max(len(s.name) for s in all_sections)
    lines = [f"{s.name:{width}}  ~{s.minutes:.1f} min  {s.title}" for s in all_sections]
    total = sum(s.minutes for s in all_sections)
    return "\n".join(lines + [f"{'':{width}}  ~{total:.1f} min in all (on one H100/H200, install not included)"])
