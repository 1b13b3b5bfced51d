"""Run one upstream benchmark: chunked inference with upstream's entry point, merge, score.

Each chunk is ``python -m llava.eval.<entry> ... --num-chunks K --chunk-idx j``
in its own process, with the caller's environment (so the ``FREEPRUNER_*``
settings reach every chunk). Files are named after :func:`naming.run_name`:

    <root>/<answers dir>/<run>.jsonl          merged answers (upstream format)
    <root>/<answers dir>/<run>.score.json     scores
    <root>/<answers dir>/<run>.stats.jsonl    the plugin's per-image token stats
    <root>/<answers dir>/<run>.chunks/        per-chunk answers, stats and inputs

A chunk whose answer file is complete is not run again, and a complete merged
answer file skips inference altogether (``force=True`` redoes it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from . import benchmarks, naming
from ...runtime.stats import read_jsonl
from .sharding import upstream_chunks, write_jsonl
from .stats import token_summary


class BenchmarkRunError(RuntimeError):
    """An upstream entry point failed or wrote an incomplete answer file."""


@dataclass(frozen=True)
class RunResult:
    benchmark: str
    run_name: str
    tag: str
    answers_file: Path
    questions: int
    scores: Optional[dict]
    tokens: Optional[dict]          # token_summary of the run's stats
    inference_s: Optional[float]    # None when existing answers were reused


def _answered_ids(path: Path) -> Optional[list]:
    """Question ids of a complete answer file, None if missing or cut short by a crash."""
    if not path.exists():
        return None
    try:
        return [a["question_id"] for a in read_jsonl(path)]
    except (ValueError, KeyError):
        return None


def _chunk_command(bench: benchmarks.Benchmark, model_path: str, question_file: Path, image_folder: Optional[Path],
                   answers_file: Path, num_chunks: int, chunk_idx: int, conv_mode: str,
                   model_base: Optional[str]) -> List[str]:
    command = [sys.executable, "-m", bench.entry, "--model-path", model_path,
               "--question-file", str(question_file), "--answers-file", str(answers_file),
               "--num-chunks", str(num_chunks), "--chunk-idx", str(chunk_idx),
               "--temperature", "0", "--conv-mode", conv_mode, *bench.entry_args]
    if image_folder is not None:
        command += ["--image-folder", str(image_folder)]
    if model_base:
        command += ["--model-base", model_base]
    return command


def _chunk_env(base: Mapping[str, str], stats_file: Path, gpus: Sequence[str], chunk_idx: int,
               num_processes: int) -> dict:
    env = dict(base)
    env["FREEPRUNER_STATS"] = str(stats_file)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[chunk_idx % len(gpus)]
    elif num_processes > 1 and "OMP_NUM_THREADS" not in env:
        # CPU processes sharing the cores run much faster without oversubscription.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def run_benchmark(name: str, model_path: str, root: Path, *, chunks: int = 1, gpus: Sequence[str] = (),
                  limit: Optional[int] = None, conv_mode: str = "vicuna_v1", model_base: Optional[str] = None,
                  environ: Optional[Mapping[str, str]] = None, force: bool = False, score: bool = True,
                  log=print) -> RunResult:
    """Answer and score benchmark ``name`` under the pruning setting in ``environ``.

    ``gpus`` (device ids) gives one chunk per device, as upstream's scripts do,
    unless ``chunks`` > 1 asks for more (spread round-robin over the devices). ``limit`` answers only
    the first questions (a smoke test); their subset is scored.
    """
    bench = benchmarks.get(name)
    root = Path(root)
    environ = dict(os.environ if environ is None else environ)
    bench.check_data(root, score=score)
    run = naming.run_name(model_path, environ)
    out_dir = Path(root, bench.answers_dir)
    answers_file = out_dir / f"{run}.jsonl"
    chunk_dir = out_dir / f"{run}.chunks"
    stats_file = out_dir / f"{run}.stats.jsonl"

    question_file = Path(root, bench.question_file)
    questions = benchmarks.load_questions(question_file)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        questions = questions[:limit]
        question_file = chunk_dir / f"questions.first{limit}{question_file.suffix}"
        benchmarks.write_questions(question_file, questions, like=bench.question_file)
    if not questions:
        raise BenchmarkRunError(f"{name}: the question file {question_file} has no questions")
    ids = [benchmarks.question_id(q) for q in questions]
    num_chunks = chunks if chunks > 1 or not gpus else len(gpus)
    if num_chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {num_chunks}")

    inference_s = None
    if force or _answered_ids(answers_file) != ids:
        if force and chunk_dir.exists():
            shutil.rmtree(chunk_dir)
            if limit is not None:
                benchmarks.write_questions(question_file, questions, like=bench.question_file)
        start = time.perf_counter()
        _run_chunks(bench, model_path, root, question_file, ids, num_chunks, chunk_dir, gpus, conv_mode,
                    model_base, environ, run, log)
        inference_s = time.perf_counter() - start
        parts = upstream_chunks(len(ids), num_chunks)
        merged = [a for j in range(len(parts)) for a in read_jsonl(chunk_dir / f"{num_chunks}_{j}.jsonl")]
        if [a["question_id"] for a in merged] != ids:
            raise BenchmarkRunError(f"{name}: merged chunk answers do not match the {len(ids)} questions")
        write_jsonl(answers_file, merged)
        with open(stats_file, "w", encoding="utf-8") as out:
            for j in range(len(parts)):
                chunk_stats = chunk_dir / f"{num_chunks}_{j}.stats.jsonl"
                if chunk_stats.exists():
                    out.write(chunk_stats.read_text(encoding="utf-8"))
        log(f"[{name}] {len(merged)} answers -> {answers_file} ({inference_s:.1f} s)")
    else:
        log(f"[{name}] reusing complete answers {answers_file}")

    scores = None
    if score:
        answers = read_jsonl(answers_file)
        scores = bench.score(benchmarks.ScoreInputs(answers, answers_file, root, run, questions))
        Path(out_dir, f"{run}.score.json").write_text(json.dumps(scores, indent=2, default=str))
        log(f"[{name}] score: {scores.get('score')}")
    return RunResult(name, run, naming.pruning_tag(environ), answers_file, len(ids), scores, token_summary([stats_file]), inference_s)


def _run_chunks(bench, model_path, root, question_file, ids, num_chunks, chunk_dir, gpus, conv_mode, model_base,
                environ, run, log) -> None:
    parts = upstream_chunks(len(ids), num_chunks)
    image_folder = Path(root, bench.image_folder) if bench.image_folder else None
    chunk_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for j, part in enumerate(parts):
        chunk_answers = chunk_dir / f"{num_chunks}_{j}.jsonl"
        if _answered_ids(chunk_answers) == ids[part.start:part.stop]:
            log(f"[{bench.name}] chunk {j + 1}/{len(parts)} already answered")
            continue
        chunk_stats = chunk_dir / f"{num_chunks}_{j}.stats.jsonl"
        chunk_stats.unlink(missing_ok=True)
        command = _chunk_command(bench, model_path, question_file, image_folder, chunk_answers, num_chunks, j,
                                 conv_mode, model_base)
        env = _chunk_env(environ, chunk_stats, gpus, j, len(parts))
        log(f"[{bench.name}] chunk {j + 1}/{len(parts)}: {len(part)} questions, run {run}")
        running.append((j, command, subprocess.Popen(command, env=env)))
    failed = [(j, command, process.wait()) for j, command, process in running]
    failed = [(j, command, rc) for j, command, rc in failed if rc != 0]
    if failed:
        j, command, rc = failed[0]
        raise BenchmarkRunError(
            f"{bench.name}: {len(failed)} chunk(s) failed; chunk {j} exited with {rc}: {' '.join(command)}"
        )
