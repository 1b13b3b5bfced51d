"""Train the toy LLaVA's projector and LoRA adapters on grounded questions.

    python -m llava_freepruner.toy.train            # writes trained.safetensors and train.log here

The vision tower and the language model stay frozen. DINOv2 features are
computed once per scene (cached under ~/.cache/llava_freepruner). Each training
sequence is one scene with up to seven question turns (up to two per family,
'exists' once 'yes' and once 'no', in random order; every answer is supervised),
which shares the 256 image tokens between questions. The projector learns on
standardised features (folded into its first layer when saved), its output
scaled to the token-embedding RMS and then fitted by the grounded regression of
toy/grounding.py before the end-to-end steps. Training stops early at
--limit-minutes; the cosine schedule follows whichever of steps or time is
further along. A held-out set (other photos) is scored at the end by
teacher-forced exact match of the answer tokens, which is what greedy decoding
would produce.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import time
from typing import List, Sequence, Tuple

import torch
from torch.nn import functional as F

from . import assemble, grounding, lora, projector_scale
from .dataset import PhotoPool, questions
from .questions import FAMILIES, Question, candidates, pick
from .scenes import Scene

IGNORE = -100
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.toy.train", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=640, help="training scenes (one sequence per scene and epoch)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the scenes, with new questions each time")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr-projector", type=float, default=1e-3)
    parser.add_argument("--lr-lora", type=float, default=4e-4)
    parser.add_argument("--ground-steps", type=int, default=200,
                        help="steps of the grounded projector initialisation (0: none; see toy/grounding.py)")
    parser.add_argument("--ground-lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=10, help="optimizer steps of linear warm-up")
    parser.add_argument("--limit-minutes", type=float, default=26.0,
                        help="stop training after this many minutes (the schedule is shortened to match)")
    parser.add_argument("--heldout", type=int, default=100, help="held-out questions scored at the end")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", default=os.path.join(HERE, "trained.safetensors"))
    parser.add_argument("--log", default=os.path.join(HERE, "train.log"))
    return parser.parse_args(argv)


class Log:
    def __init__(self, path: str):
        self.file = open(path, "w", encoding="utf-8")
        self.start = time.time()

    def __call__(self, message: str) -> None:
        line = f"[{time.time() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


# --- data ---------------------------------------------------------------------------


PER_FAMILY = 2


def training_turns(rng: random.Random, scene: Scene) -> List[Question]:
    """Up to PER_FAMILY distinct questions per family ('exists': one 'yes', one
    'no'), in random order; more answers per sequence for the same image tokens."""
    turns = []
    for family in FAMILIES:
        if family == "exists":
            turns += [q for q in (pick(rng, scene, family, a) for a in ("yes", "no")) if q is not None]
        else:
            found = candidates(scene, family)
            turns += rng.sample(found, min(PER_FAMILY, len(found)))
    rng.shuffle(turns)
    return turns


def messages(turns: Sequence[Question]) -> List[dict]:
    out = []
    for i, q in enumerate(turns):
        content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": q.text}]
        out += [{"role": "user", "content": content}, {"role": "assistant", "content": q.answer}]
    return out


def encode(processor, image, turns: Sequence[Question]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the conversation and labels that keep only the answers (and
    their end-of-turn token). Each answer's span is found by rendering the
    conversation up to that turn's generation prompt."""
    def ids(text):
        return processor(images=image, text=text, return_tensors="pt")["input_ids"][0]

    chat = messages(turns)
    full = ids(processor.apply_chat_template(chat))
    labels = torch.full_like(full, IGNORE)
    for turn in range(len(turns)):
        prompt = ids(processor.apply_chat_template(chat[:2 * turn + 1], add_generation_prompt=True))
        with_answer = ids(processor.apply_chat_template(chat[:2 * turn + 2]))
        if not torch.equal(full[:len(with_answer)], with_answer) or not torch.equal(full[:len(prompt)], prompt):
            raise RuntimeError("chat template does not render turns as prefixes of the conversation")
        end = len(with_answer) - 1          # drop the newline after <|im_end|>
        labels[len(prompt):end] = full[len(prompt):end]
    return full, labels


@torch.no_grad()
def vision_features(model, processor, images, batch: int = 16) -> torch.Tensor:
    """(N, 256, 384): what the model's projector receives, read at its input."""
    captured = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    try:
        for start in range(0, len(images), batch):
            pixels = processor.image_processor(images[start:start + batch], return_tensors="pt")["pixel_values"]
            model.model.get_image_features(pixels, vision_feature_layer=model.config.vision_feature_layer,
                                           vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    finally:
        hook.remove()
    return torch.cat(captured)


def cached_features(model, processor, key: str, images, log: Log) -> torch.Tensor:
    from ..vision.img_focus import cache_dir

    path = os.path.join(cache_dir(), f"toy_features_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        return torch.load(path, weights_only=True)
    start = time.time()
    features = vision_features(model, processor, images)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(features, path)
    log(f"DINOv2 features of {len(images)} scenes: {time.time() - start:.0f}s (cached in {path})")
    return features


# --- model --------------------------------------------------------------------------


def answer_loss(model, features, input_ids, labels, attention_mask):
    """Cross-entropy on the answer tokens; (loss, per-sequence all-correct flags)."""
    embeds = model.model.language_model.get_input_embeddings()(input_ids)
    projected = model.model.multi_modal_projector(features)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype))
    # bf16 matmuls (AVX512-BF16) halve the step time; the adapters are kept and stored in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    hidden = hidden.float()
    targets = labels[:, 1:]
    where = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][where])
    loss = F.cross_entropy(logits, targets[where])
    hits = torch.ones(len(input_ids), dtype=torch.bool)
    wrong = (logits.argmax(-1) != targets[where])
    rows = where.nonzero()[:, 0]
    hits[rows[wrong]] = False
    return loss, hits


def collate(encoded, pad_id: int):
    length = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), length), pad_id)
    labels = torch.full((len(encoded), length), IGNORE)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, :len(ids)], labels[row, :len(ids)], attention[row, :len(ids)] = ids, lab, 1
    return input_ids, labels, attention


def heldout_accuracy(model, processor, features, items, pad_id, batch: int = 8) -> dict:
    """Teacher-forced exact match per family on single-question prompts."""
    right = {f: 0 for f in FAMILIES}
    total = {f: 0 for f in FAMILIES}
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            encoded = [encode(processor, image, [q]) for image, q in chunk]
            _, hits = answer_loss(model, features[start:start + batch], *collate(encoded, pad_id))
            for (_, q), hit in zip(chunk, hits.tolist()):
                total[q.family] += 1
                right[q.family] += hit
    report = {f: right[f] / total[f] for f in FAMILIES if total[f]}
    report["all"] = sum(right.values()) / max(1, sum(total.values()))
    return report


def ground(args, model, processor, projector, scenes, inputs, log: Log) -> None:
    table = model.model.language_model.get_input_embeddings().weight

    def embed(text: str) -> torch.Tensor:
        return table[processor.tokenizer(text, add_special_tokens=False)["input_ids"]].mean(0)

    start = time.time()
    with torch.no_grad():
        targets, objects = grounding.patch_targets(scenes, embed)
    loss = grounding.fit(projector, inputs, targets, objects, args.ground_steps, args.ground_lr, seed=args.seed)
    log(f"grounded projector initialisation: {args.ground_steps} steps, {objects.float().mean():.3f} of patches "
        f"on objects, final weighted MSE {loss:.5f} (target RMS {projector_scale.rms(targets):.4f}), "
        f"{time.time() - start:.0f}s")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = Log(args.log)
    log(f"toy LLaVA training: {vars(args)}")
    model, processor = assemble.build({})
    pad_id = model.generation_config.pad_token_id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = lora.attach(model.model.language_model)
    projector = model.model.multi_modal_projector
    for parameter in projector.parameters():
        parameter.requires_grad_(True)
    lora_params = [p for m in adapters.values() for p in (m.A, m.B)]
    log(f"trainable: projector {sum(p.numel() for p in projector.parameters())}, "
        f"LoRA {sum(p.numel() for p in lora_params)} parameters")

    rng = random.Random(args.seed)
    train_pool = PhotoPool(["train"])
    scenes = [train_pool.scene(rng) for _ in range(args.scenes)]
    heldout = list(questions(args.seed + 1, PhotoPool(["heldout"]), args.heldout))
    train_features = cached_features(model, processor, f"train|{args.seed}|{args.scenes}",
                                     [image for _, image in scenes], log)
    heldout_features = cached_features(model, processor, f"heldout|{args.seed + 1}|{args.heldout}",
                                       [image for _, image, _ in heldout], log)
    heldout_items = [(image, q) for _, image, q in heldout]
    mean, std = projector_scale.feature_stats(train_features)
    train_inputs = projector_scale.standardize(train_features, mean, std)
    embeddings = model.model.language_model.get_input_embeddings().weight[:-1]   # the last row is <image>
    target = projector_scale.rms(embeddings)
    before = projector_scale.match_output_rms(projector, projector.linear_2, train_inputs[:8], target)
    log(f"projector output RMS {before:.4f} scaled to the token-embedding RMS {target:.4f}")
    if args.ground_steps:
        ground(args, model, processor, projector, [scene for scene, _ in scenes], train_inputs, log)

    optimizer = torch.optim.AdamW([
        {"params": list(projector.parameters()), "lr": args.lr_projector},
        {"params": lora_params, "lr": args.lr_lora},
    ], weight_decay=0.0)
    order = []
    for _ in range(args.epochs):
        order += rng.sample(range(args.scenes), args.scenes)
    steps = math.ceil(len(order) / args.batch)
    started, limit = time.time(), args.limit_minutes * 60

    def progress(step: int) -> float:
        return min(1.0, max(step / steps, (time.time() - started) / limit))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup)
                                                 * 0.5 * (1 + math.cos(math.pi * progress(s))))
    model.train()
    running, logged, answered = 0.0, 0, 0
    for step in range(steps):
        chunk = order[step * args.batch:(step + 1) * args.batch]
        conversations = [(scenes[i][1], training_turns(rng, scenes[i][0])) for i in chunk]
        answered += sum(len(turns) for _, turns in conversations)
        encoded = [encode(processor, image, turns) for image, turns in conversations]
        loss, _ = answer_loss(model, train_inputs[chunk], *collate(encoded, pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running, logged = running + loss.item(), logged + 1
        if (step + 1) % 10 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} sequences {min((step + 1) * args.batch, len(order))} "
                f"answers {answered} loss {running / logged:.4f}")
            running, logged = 0.0, 0
        if time.time() - started > limit:
            log(f"time limit of {args.limit_minutes:g} minutes reached after step {step + 1}/{steps}")
            break
    model.eval()
    projector_scale.fold_standardization(projector.linear_1, mean, std)   # the saved projector reads raw features
    trained = {f"{assemble.PROJECTOR_PREFIX}{k}": v.detach().clone().contiguous()
               for k, v in projector.state_dict().items()}
    trained.update(lora.state(adapters))
    from safetensors.torch import save_file

    save_file(trained, args.out, metadata={"seed": str(args.seed), "scenes": str(args.scenes),
                                           "lora_rank": str(lora.RANK), "lora_targets": ",".join(lora.TARGETS)})
    log(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    report = heldout_accuracy(model, processor, heldout_features, heldout_items, pad_id)
    log("held-out teacher-forced exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
