"""Data-parallel ``llava.eval.model_vqa_loader``: one model replica per rank, one shard of questions each.

    deepspeed --num_gpus N eval_scripts/ds_model_vqa_loader.py <model_vqa_loader flags>
    torchrun --nproc_per_node N eval_scripts/ds_model_vqa_loader.py ...
    python eval_scripts/ds_model_vqa_loader.py ...            (one process)

Each rank appends its answers to ``<answers-file>.shards/rank*.jsonl`` as it
goes (flushed per question); a restarted run skips answered questions; rank 0
then writes ``--answers-file`` in upstream's format and question order,
checking every question is answered exactly once. Ranks only synchronise
through a gloo barrier, so CPU-only machines work too. The plugin's import
hook patches ``llava`` in every rank, as in any upstream entry point.
"""

import argparse
import datetime
import json
import os
import sys

from llava_freepruner.tools.evaluation.distributed import visible_device_for, world_from_env
from llava_freepruner.tools.evaluation.sharding import (
    ShardError, ShardWriter, merge_records, pending_indices, read_shard_logs, shard_log_path, shard_range, stale_positions, upstream_chunks, write_jsonl,
)

WORLD = world_from_env(os.environ)
_device = visible_device_for(os.environ, WORLD)
if _device is not None:  # before torch initialises CUDA
    os.environ["CUDA_VISIBLE_DEVICES"] = _device

import shortuuid  # noqa: E402
import torch  # noqa: E402
from llava.eval import model_vqa_loader as upstream  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The flags of llava.eval.model_vqa_loader, with its defaults.
    p.add_argument("--model-path", type=str, default="facebook/opt-350m")
    p.add_argument("--model-base", type=str, default=None)
    p.add_argument("--image-folder", type=str, default="")
    p.add_argument("--question-file", type=str, default="tables/question.jsonl")
    p.add_argument("--answers-file", type=str, default="answer.jsonl")
    p.add_argument("--conv-mode", type=str, default="llava_v1")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--max_new_tokens", type=int, default=128)
    # Ours.
    p.add_argument("--shard-dir", type=str, default=None,
                   help="per-rank answer logs (default: <answers-file>.shards; shared by all nodes)")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers per rank (upstream: 4)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load_questions(args):
    """The questions of this run (upstream's --num-chunks/--chunk-idx applied first)."""
    with open(os.path.expanduser(args.question_file)) as f:
        questions = [json.loads(line) for line in f if line.strip()]
    chunks = upstream_chunks(len(questions), args.num_chunks)
    if not 0 <= args.chunk_idx < args.num_chunks:
        raise ValueError(f"--chunk-idx {args.chunk_idx} out of range: accepted 0..{args.num_chunks - 1}")
    return [questions[i] for i in chunks[args.chunk_idx]] if args.chunk_idx < len(chunks) else []


def answer_questions(args, questions, indices, writer):
    """Upstream's generation loop over ``indices``, each answer written as soon as it exists."""
    upstream.disable_torch_init()
    model_path = os.path.expanduser(args.model_path)
    model_name = upstream.get_model_name_from_path(model_path)
    tokenizer, model, image_processor, _ = upstream.load_pretrained_model(model_path, args.model_base, model_name)
    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in args.conv_mode:
        args.conv_mode = args.conv_mode + "_mmtag"
    upstream.args = args  # upstream's CustomDataset reads the conversation mode from this module global
    todo = [questions[i] for i in indices]
    loader = upstream.create_data_loader(todo, args.image_folder, tokenizer, image_processor, model.config,
                                         num_workers=args.num_workers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for position, (input_ids, image_tensor, image_sizes) in zip(indices, loader):
        line = questions[position]
        with torch.inference_mode():
            output_ids = model.generate(
                input_ids.to(device=device, non_blocking=True),
                images=image_tensor.to(dtype=torch.float16, device=device, non_blocking=True),
                image_sizes=image_sizes,
                do_sample=args.temperature > 0,
                temperature=args.temperature,
                top_p=args.top_p,
                num_beams=args.num_beams,
                max_new_tokens=args.max_new_tokens,
                use_cache=True)
        text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
        writer.write(position, {"question_id": line["question_id"], "prompt": line["text"], "text": text,
                                "answer_id": shortuuid.uuid(), "model_id": model_name, "metadata": {}})
        print(f"[rank {WORLD.rank}] answered question {position}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    if WORLD.world_size > 1:
        import torch.distributed as dist

        # Barrier only; a long timeout because ranks with slow shards finish late.
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
    questions = load_questions(args)
    ids = [q["question_id"] for q in questions]
    shard_dir = args.shard_dir or os.path.expanduser(args.answers_file) + ".shards"
    records = read_shard_logs(shard_dir)
    stale = stale_positions(records, ids)
    if stale:
        raise ShardError(f"{shard_dir} holds answers to other questions (positions {stale[:5]}): "
                         f"it belongs to another question file; remove it")
    mine = pending_indices(shard_range(len(questions), WORLD.world_size, WORLD.rank), records)
    print(f"[rank {WORLD.rank}/{WORLD.world_size}] {len(mine)} questions to answer "
          f"({len(records)} answered before, all ranks)", flush=True)
    if mine:
        with ShardWriter(shard_log_path(shard_dir, WORLD.rank, WORLD.world_size)) as writer:
            answer_questions(args, questions, mine, writer)
    if WORLD.world_size > 1:
        torch.distributed.barrier()
    if WORLD.is_main:
        merged = merge_records(read_shard_logs(shard_dir), ids)
        write_jsonl(os.path.expanduser(args.answers_file), merged)
        print(f"[rank 0] merged {len(merged)} answers -> {args.answers_file}", flush=True)
    if WORLD.world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
