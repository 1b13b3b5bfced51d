"""Splitting questions over workers, resumable answer logs, and merging.

Pure file/list logic (no torch, no llava) shared by the benchmark driver and
the distributed evaluation script.

A shard log is a JSONL file of ``{"index": i, "answer": {...}}`` records, where
``i`` is the question's position in the question file (question ids are not
unique in every benchmark: MME asks two questions per image id). Each record is
written and flushed as soon as it is known, so a crash loses at most the
question in flight; a line cut short by the crash is dropped on restart.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence



class ShardError(RuntimeError):
    """Answer logs that cannot be merged into one complete answer file."""


def shard_range(num_items: int, num_shards: int, shard_index: int) -> range:
    """Contiguous block of item positions for one shard; sizes differ by at most one.

    Shards past the end are empty (no IndexError when items < shards).
    """
    if num_shards < 1:
        raise ValueError(f"number of shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} out of range: accepted 0..{num_shards - 1}")
    if num_items < 0:
        raise ValueError(f"number of items must be >= 0, got {num_items}")
    base, extra = divmod(num_items, num_shards)
    start = shard_index * base + min(shard_index, extra)
    return range(start, start + base + (1 if shard_index < extra else 0))


def upstream_chunks(num_items: int, num_chunks: int) -> List[range]:
    """The non-empty chunks upstream's ``get_chunk`` serves for ``--num-chunks``.

    Upstream cuts blocks of ``ceil(n / chunks)`` items, so it can serve fewer
    chunks than asked (5 items in 4 chunks: 2, 2, 1) and raises IndexError for
    the rest. Launching only these chunks keeps upstream's boundaries and
    never asks for a chunk that does not exist.
    """
    if num_chunks < 1:
        raise ValueError(f"number of chunks must be >= 1, got {num_chunks}")
    if num_items < 1:
        return []
    size = math.ceil(num_items / num_chunks)
    return [range(start, min(start + size, num_items)) for start in range(0, num_items, size)]


def shard_log_path(directory: Path, rank: int, world_size: int) -> Path:
    return Path(directory) / f"rank{rank:04d}-of-{world_size:04d}.jsonl"


def _drop_partial_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def read_shard_log(path: Path) -> List[dict]:
    """Records of one log; an unterminated last line (crash mid-write) is ignored."""
    text = Path(path).read_text(encoding="utf-8")
    # The piece after the last newline is empty, or a line a crash cut short.
    complete = text.split("\n")[:-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["index"], record["answer"]
        except (ValueError, KeyError, TypeError) as err:
            raise ShardError(f"{path}:{number}: not an answer record ({err}): {line[:120]!r}") from None
        records.append(record)
    return records


def read_shard_logs(directory: Path) -> List[dict]:
    """Records of every log in ``directory`` (any world size), in file order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("rank*-of-*.jsonl")):
        records.extend(read_shard_log(path))
    return records


class ShardWriter:
    """Appends answer records to one rank's log, flushing each one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _drop_partial_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, index: int, answer: dict) -> None:
        self._file.write(json.dumps({"index": index, "answer": answer}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pending_indices(indices: Iterable[int], records: Sequence[dict]) -> List[int]:
    """The positions in ``indices`` that no record answers yet."""
    done = {r["index"] for r in records}
    return [i for i in indices if i not in done]


def stale_positions(records: Sequence[dict], question_ids: Sequence) -> List:
    """Positions of records that do not answer the question at their position (another question file)."""
    return [r["index"] for r in records
            if not (isinstance(r["index"], int) and 0 <= r["index"] < len(question_ids))
            or r["answer"].get("question_id") != question_ids[r["index"]]]


def merge_records(records: Sequence[dict], question_ids: Sequence) -> List[dict]:
    """Answers in question-file order, each question answered exactly once.

    ``question_ids[i]`` is the id of question ``i``; a record whose answer
    carries another id means the question file changed under the logs.
    """
    by_index: Dict[int, dict] = {}
    duplicates, foreign, mismatched = [], [], []
    for record in records:
        index, answer = record["index"], record["answer"]
        if not isinstance(index, int) or not 0 <= index < len(question_ids):
            foreign.append(index)
        elif index in by_index:
            duplicates.append(index)
        elif answer.get("question_id") != question_ids[index]:
            mismatched.append(index)
        else:
            by_index[index] = answer
    missing = [i for i in range(len(question_ids)) if i not in by_index]
    problems = []
    if duplicates:
        problems.append(f"answered more than once: {_preview(duplicates)}")
    if foreign:
        problems.append(f"positions outside the {len(question_ids)} questions: {_preview(foreign)}")
    if mismatched:
        problems.append(f"question id differs from the question file at: {_preview(mismatched)}")
    if missing:
        problems.append(f"unanswered: {_preview(missing)}")
    if problems:
        raise ShardError("cannot merge answers: " + "; ".join(problems) + " (question positions)")
    return [by_index[i] for i in range(len(question_ids))]


def _preview(items: Sequence, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in sorted(items, key=str)[:limit])
    return f"{len(items)} ({shown}{', ...' if len(items) > limit else ''})"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


