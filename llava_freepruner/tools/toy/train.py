"""Train the toy LLaVA's projector and LoRA adapters on grounded questions.

    python -m llava_freepruner.tools.toy.train            # writes trained.safetensors and train.log here
    bash eval_scripts/toy_train.sh                  # the run behind the committed weights

The vision tower and the language model stay frozen (LoRA adapters on its
attention projections are trained). DINOv2 features are computed once per scene
(cached under ~/.cache/llava_freepruner). Each training sequence is one scene
with every question it has a unique answer to (balanced 'yes'/'no' for 'exists')
plus a description of its objects, packed behind one copy of the image tokens
as independent branches (toy/packing.py): each question is learnt exactly as it
is asked at test time, alone, while the 256 image tokens are processed once.
Every family weighs the same in the loss, 'exists' and 'count' twice as much by
default (--family-weights: binding a colour to a shape and counting are learnt
last). The projector learns on standardised features (folded into its first
layer when saved), its output scaled to the token-embedding RMS and then fitted by the
grounded regression of toy/grounding.py before the end-to-end steps (a fresh
start only; --resume continues from saved weights). Training stops early at
--limit-minutes; the cosine schedule follows whichever of steps or time is
further along. Weights are written, and a held-out set (other photos) scored by
teacher-forced exact match of the answer tokens (what greedy decoding would
produce), every --checkpoint-minutes and at the end.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch.nn import functional as F

from . import assemble, grounding, lora, packing, projector_scale
from .dataset import PhotoPool, questions
from .questions import FAMILIES, Question, candidates
from .scenes import Scene

IGNORE = packing.IGNORE
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.tools.toy.train", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=2800, help="training scenes (one sequence per scene and epoch)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the scenes, with new questions each time")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr-projector", type=float, default=2e-3)
    parser.add_argument("--lr-lora", type=float, default=2e-3)
    parser.add_argument("--lora-rank", type=int, default=lora.RANK)
    parser.add_argument("--lora-targets", default=",".join(lora.TARGETS),
                        help="comma-separated projections of every decoder layer that get adapters")
    parser.add_argument("--ground-steps", type=int, default=200,
                        help="steps of the grounded projector initialisation (0: none; see toy/grounding.py)")
    parser.add_argument("--ground-lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20, help="optimizer steps of linear warm-up")
    parser.add_argument("--limit-minutes", type=float, default=50.0,
                        help="stop training after this many minutes (the schedule is shortened to match)")
    parser.add_argument("--resume", metavar="WEIGHTS",
                        help="start from saved weights (e.g. trained.safetensors) instead of a fresh projector "
                             "and zero adapters; the scaling and grounding of a fresh start are skipped")
    parser.add_argument("--family-weights", default="exists=2,count=2",
                        help="loss weight per question family (unnamed families weigh 1; '' for all 1)")
    parser.add_argument("--heldout-seed", type=int, default=1, help="seed of the held-out check's questions")
    parser.add_argument("--heldout", type=int, default=100,
                        help="held-out questions scored at every checkpoint and at the end")
    parser.add_argument("--checkpoint-minutes", type=float, default=12.0,
                        help="write the weights and score the held-out questions this often")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=os.path.join(HERE, "trained.safetensors"))
    parser.add_argument("--log", default=os.path.join(HERE, "train.log"))
    return parser.parse_args(argv)


class Log:
    def __init__(self, path: str, append: bool = False):
        self.file = open(path, "a" if append else "w", encoding="utf-8")
        self.start = time.time()

    def __call__(self, message: str) -> None:
        line = f"[{time.time() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


# --- data ---------------------------------------------------------------------------


EXISTS_EACH = 3


@dataclass(frozen=True)
class Description(Question):
    """Training only: name every object, top to bottom (no answer-format line)."""

    @property
    def text(self) -> str:
        return self.question


def describe(scene: Scene) -> Description:
    objects = sorted(scene.objects, key=lambda o: (o.y, o.x))
    return Description("describe", "List the objects from top to bottom.",
                       ", ".join(f"{o.color} {o.shape}" for o in objects))


def training_questions(rng: random.Random, scene: Scene) -> List[Question]:
    """Every colour and shape question the scene has, the count question, as many
    'yes' as 'no' questions (up to EXISTS_EACH each) and a description of the scene,
    which gives dense supervision of what each object looks like. Questions are
    packed as independent branches (toy/packing.py): no answer is seen by another."""
    asked = candidates(scene, "color") + candidates(scene, "shape") + candidates(scene, "count")
    yes, no = candidates(scene, "exists", "yes"), candidates(scene, "exists", "no")
    each = min(EXISTS_EACH, len(yes), len(no))
    return asked + rng.sample(yes, each) + rng.sample(no, each) + [describe(scene)]


def family_weights(asked: Sequence[Question], scale: Dict[str, float] = None) -> List[float]:
    """Every family asked weighs the same (times ``scale[family]``, default 1)."""
    per_family = Counter(q.family for q in asked)
    return [(scale or {}).get(q.family, 1.0) / per_family[q.family] for q in asked]


def parse_family_weights(text: str) -> Dict[str, float]:
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        family, _, value = part.partition("=")
        if family not in FAMILIES + ("describe",):
            raise SystemExit(f"--family-weights {part!r}: unknown family; accepted: {', '.join(FAMILIES)}, describe")
        try:
            weights[family] = float(value)
        except ValueError:
            raise SystemExit(f"--family-weights {part!r}: expected FAMILY=NUMBER, e.g. exists=2") from None
    return weights


def conversation(processor, image, question: Question, weight: float = 1.0) -> packing.Conversation:
    """The single-question chat (user: image then question; assistant: answer) as the
    accuracy command prompts it; the answer and its end-of-turn token are supervised."""
    def ids(chat, **kwargs):
        text = processor.apply_chat_template(chat, **kwargs)
        return processor(images=image, text=text, return_tensors="pt")["input_ids"][0].tolist()

    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.text}]}
    prompt = ids([user], add_generation_prompt=True)
    full = ids([user, {"role": "assistant", "content": question.answer}])
    if full[:len(prompt)] != prompt:
        raise RuntimeError("chat template does not render the prompt as a prefix of the conversation")
    return packing.Conversation(full, len(prompt), len(full) - 1, weight)   # drop the newline after <|im_end|>


def packed_scene(processor, image, asked: Sequence[Question], image_token_id: int, weights=None) -> packing.Packed:
    conversations = [conversation(processor, image, q, w)
                     for q, w in zip(asked, weights or [1.0] * len(asked))]
    last_image_token = max(i for i, t in enumerate(conversations[0].ids) if t == image_token_id)
    return packing.pack(conversations, min_prefix=last_image_token + 1)


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


def answer_loss(model, features, input_ids, labels, weights, positions, allowed):
    """Weighted cross-entropy on the answer tokens of packed sequences (see
    toy/packing.py); returns (loss, per-branch all-correct flags as {(row, branch): bool})."""
    embeds = model.model.language_model.get_input_embeddings()(input_ids)
    projected = model.model.multi_modal_projector(features)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype))
    # bf16 matmuls (AVX512-BF16) halve the step time; the adapters are kept and stored in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention_bias(model.model.language_model, allowed),
                                            position_ids=positions, use_cache=False).last_hidden_state
    where = labels != IGNORE
    logits = model.lm_head(hidden[where].float())
    token_weights = weights[where]
    loss = (token_weights * F.cross_entropy(logits, labels[where], reduction="none")).sum() / token_weights.sum()
    return loss, logits.argmax(-1) == labels[where]


def attention_bias(language_model, allowed: torch.Tensor) -> torch.Tensor:
    """The boolean (B, 1, L, L) mask as ``language_model``'s attention takes it."""
    if language_model.config._attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def heldout_accuracy(model, processor, features, items, pad_id, batch: int = 8) -> dict:
    """Teacher-forced exact match per family on single-question prompts."""
    right = {f: 0 for f in FAMILIES}
    total = {f: 0 for f in FAMILIES}
    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            packed = [packing.pack([conversation(processor, image, q)]) for image, q in chunk]
            ids, labels, weights, positions, allowed = packing.collate(packed, pad_id)
            _, correct = answer_loss(model, features[start:start + batch], ids, labels, weights, positions, allowed)
            rows = (labels != IGNORE).nonzero()[:, 0]
            for row, (_, q) in enumerate(chunk):
                total[q.family] += 1
                right[q.family] += bool(correct[rows == row].all())
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
    family_scale = parse_family_weights(args.family_weights)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = Log(args.log, append=bool(args.resume))
    log(f"toy LLaVA training: {vars(args)}")
    model, processor = assemble.build({})
    pad_id = model.generation_config.pad_token_id
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    adapters = lora.attach(model.model.language_model, args.lora_rank, args.lora_targets.split(","))
    projector = model.model.multi_modal_projector
    for parameter in projector.parameters():
        parameter.requires_grad_(True)
    lora_params = [p for m in adapters.values() for p in (m.A, m.B)]
    log(f"trainable: projector {sum(p.numel() for p in projector.parameters())}, "
        f"LoRA {sum(p.numel() for p in lora_params)} parameters")

    rng = random.Random(args.seed)
    train_pool = PhotoPool(["train"])
    scenes = [train_pool.scene(rng) for _ in range(args.scenes)]
    heldout = list(questions(args.heldout_seed, PhotoPool(["heldout"]), args.heldout))
    train_features = cached_features(model, processor, f"train|{args.seed}|{args.scenes}",
                                     [image for _, image in scenes], log)
    heldout_features = cached_features(model, processor, f"heldout|{args.heldout_seed}|{args.heldout}",
                                       [image for _, image, _ in heldout], log)
    heldout_items = [(image, q) for _, image, q in heldout]
    mean, std = projector_scale.feature_stats(train_features)
    train_inputs = projector_scale.standardize(train_features, mean, std)
    if args.resume:
        resume(args.resume, projector, adapters, mean, std)
        log(f"resumed from {args.resume}")
    else:
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
    heldout_inputs = projector_scale.standardize(heldout_features, mean, std)

    def checkpoint(step: int) -> None:
        model.eval()
        save(args, projector, adapters, mean, std, step)
        log(f"step {step}: wrote {args.out} ({os.path.getsize(args.out)} bytes)")
        report = heldout_accuracy(model, processor, heldout_inputs, heldout_items, pad_id)
        log(f"step {step}: held-out teacher-forced exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
        model.train()

    model.train()
    running, logged, answered = 0.0, 0, 0
    last_checkpoint = time.time()
    for step in range(steps):
        chunk = order[step * args.batch:(step + 1) * args.batch]
        packed = []
        for i in chunk:
            asked = training_questions(rng, scenes[i][0])
            answered += len(asked)
            packed.append(packed_scene(processor, scenes[i][1], asked, model.config.image_token_id,
                                       family_weights(asked, family_scale)))
        loss, _ = answer_loss(model, train_inputs[chunk], *packing.collate(packed, pad_id))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running, logged = running + loss.item(), logged + 1
        if (step + 1) % 10 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} sequences {min((step + 1) * args.batch, len(order))} "
                f"answers {answered} loss {running / logged:.4f}")
            running, logged = 0.0, 0
        out_of_time = time.time() - started > limit
        if out_of_time:
            log(f"time limit of {args.limit_minutes:g} minutes reached after step {step + 1}/{steps}")
        if out_of_time or step + 1 == steps or time.time() - last_checkpoint > args.checkpoint_minutes * 60:
            checkpoint(step + 1)
            last_checkpoint = time.time()
        if out_of_time:
            break
    return 0


def resume(path: str, projector, adapters, mean, std) -> None:
    """Load saved weights into the training modules: the projector reads
    standardised features here, so the folded standardisation is taken out again."""
    trained = assemble.load_trained(path)
    projector.load_state_dict({k[len(assemble.PROJECTOR_PREFIX):]: v for k, v in trained.items()
                               if k.startswith(assemble.PROJECTOR_PREFIX)})
    projector_scale.unfold_standardization(projector.linear_1, mean, std)
    lora.load(adapters, trained)


def save(args, projector, adapters, mean, std, step: int) -> None:
    """Write the projector (reading raw features: the standardisation folded into a
    copy of its first layer) and the adapters to ``args.out``."""
    from safetensors.torch import save_file

    saved = copy.deepcopy(projector)
    projector_scale.fold_standardization(saved.linear_1, mean, std)
    trained = {f"{assemble.PROJECTOR_PREFIX}{k}": v.detach().clone().contiguous()
               for k, v in saved.state_dict().items()}
    trained.update(lora.state(adapters))
    save_file(trained, args.out, metadata={"seed": str(args.seed), "scenes": str(args.scenes), "steps": str(step),
                                           "lora_rank": str(args.lora_rank), "lora_targets": args.lora_targets})


if __name__ == "__main__":
    raise SystemExit(main())
