import json

import pytest

from llava_freepruner.tools.evaluation.sharding import (
    ShardError, ShardWriter, merge_records, pending_indices, read_shard_log, read_shard_logs, shard_log_path, shard_range, stale_positions, upstream_chunks,
)


@pytest.mark.parametrize("n,k", [(0, 1), (1, 4), (3, 5), (10, 3), (7, 7), (100, 8)])
def test_shards_cover_every_item_once_and_balance(n, k):
    ranges = [shard_range(n, k, i) for i in range(k)]
    assert [i for r in ranges for i in r] == list(range(n))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match="shard index 3 out of range"):
        shard_range(10, 3, 3)
    with pytest.raises(ValueError, match="number of shards must be >= 1"):
        shard_range(10, 0, 0)


def upstream_split_list(lst, n):
    """Upstream's chunking rule (ceil-sized blocks), restated for comparison."""
    size = -(-len(lst) // n)
    return [lst[i:i + size] for i in range(0, len(lst), size)]


@pytest.mark.parametrize("n,k", [(5, 4), (2, 8), (10, 3), (9, 3), (1, 1)])
def test_upstream_chunks_are_the_chunks_upstream_can_serve(n, k):
    items = list(range(n))
    ours = [list(r) for r in upstream_chunks(n, k)]
    assert ours == upstream_split_list(items, k)
    # the chunk indices past len(ours) are the ones upstream's get_chunk raises IndexError for
    assert len(ours) <= k


def test_upstream_chunks_match_installed_llava():
    upstream = pytest.importorskip("llava.eval.model_vqa_loader")
    items = list(range(5))
    assert [items[r.start:r.stop] for r in upstream_chunks(5, 4)] == upstream.split_list(items, 4)
    with pytest.raises(IndexError):
        upstream.get_chunk(items, 4, 3)  # the upstream bug the driver avoids


def answer(qid):
    return {"question_id": qid, "prompt": "p", "text": f"a{qid}", "answer_id": "x", "model_id": "m", "metadata": {}}


def test_writer_flushes_each_record(tmp_path):
    path = shard_log_path(tmp_path, 0, 2)
    with ShardWriter(path) as w:
        w.write(3, answer("q3"))
        # visible to another reader before close: a crash now loses nothing
        assert read_shard_log(path) == [{"index": 3, "answer": answer("q3")}]


def test_crash_mid_write_then_resume_loses_only_the_question_in_flight(tmp_path):
    ids = [f"q{i}" for i in range(6)]
    shard = shard_range(len(ids), 2, 1)  # positions 3, 4, 5
    path = shard_log_path(tmp_path, 1, 2)
    with ShardWriter(path) as w:
        w.write(3, answer("q3"))
    with open(path, "a") as f:  # the process died while writing position 4
        f.write('{"index": 4, "answer": {"question_id": "q')
    records = read_shard_logs(tmp_path)
    assert [r["index"] for r in records] == [3]
    todo = pending_indices(shard, records)
    assert todo == [4, 5]
    with ShardWriter(path) as w:  # the restart appends after cutting the broken line
        for i in todo:
            w.write(i, answer(ids[i]))
    with ShardWriter(shard_log_path(tmp_path, 0, 2)) as w:
        for i in shard_range(len(ids), 2, 0):
            w.write(i, answer(ids[i]))
    merged = merge_records(read_shard_logs(tmp_path), ids)
    assert [a["question_id"] for a in merged] == ids
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_resume_with_another_world_size_reads_old_logs(tmp_path):
    with ShardWriter(shard_log_path(tmp_path, 0, 4)) as w:
        w.write(0, answer("a"))
    records = read_shard_logs(tmp_path)
    assert pending_indices(shard_range(4, 2, 0), records) == [1]


def test_merge_reports_missing_duplicate_and_foreign(tmp_path):
    ids = ["a", "b", "c"]
    records = [{"index": 0, "answer": answer("a")}, {"index": 0, "answer": answer("a")},
               {"index": 2, "answer": answer("x")}, {"index": 7, "answer": answer("z")}]
    with pytest.raises(ShardError) as err:
        merge_records(records, ids)
    message = str(err.value)
    assert "answered more than once: 1 (0)" in message
    assert "unanswered: 2 (1, 2)" in message
    assert "question id differs" in message and "outside the 3 questions" in message
    assert stale_positions(records, ids) == [2, 7]


def test_merge_keeps_question_order_with_repeated_ids():
    ids = ["img1", "img1", "img2"]  # MME asks two questions per image id
    records = [{"index": 2, "answer": answer("img2")}, {"index": 1, "answer": answer("img1")},
               {"index": 0, "answer": answer("img1")}]
    assert [a["question_id"] for a in merge_records(records, ids)] == ids


def test_corrupt_line_inside_a_log_is_an_error(tmp_path):
    path = shard_log_path(tmp_path, 0, 1)
    path.write_text('{"index": 0, "answer": {}}\nnot json\n{"index": 1, "answer": {}}\n')
    with pytest.raises(ShardError, match=r"rank0000-of-0001.jsonl:2"):
        read_shard_log(path)
