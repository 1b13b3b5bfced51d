"""Fit a FitPrune recipe for a FLOPs budget on calibration questions.

Two kinds of checkpoint, told apart by their ``config.json``: upstream LLaVA
(inputs built exactly like ``llava.eval.model_vqa_loader``) and transformers'
``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` /
``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` /
``Qwen3VLForConditionalGeneration`` (inputs from the processor's chat template, see
:mod:`.transformers_fit`).
Either way each sample is encoded once (image tower, projector, splice) and its
embeddings are cached; every bisection round then runs only the language model,
with the fitting policy deciding deletions layer by layer (:func:`fit_encoded`).
"""

import hashlib
import json
import os
import statistics
import time

import torch

from ...runtime.budget import flops_reduction, scale_deletions
from ...runtime.llm.policies import SELF_CROSS, PrunePolicy
from ...runtime.llm.runtime import attach, begin_prefill, detach
from ...runtime.fitprune.recipes import Recipe, read_json_object
from .rules import FlopsBudget, fit_deletions, rounds_for, smallest_passing_alpha


class _ReferenceMasses(PrunePolicy):
    """Unpruned pass: records the self and cross attention masses of every layer."""

    def begin(self, visual_counts):
        self.masses = []
        return []

    def statistic(self, layer_idx):
        return SELF_CROSS

    def choose(self, layer_idx, stats, alive):
        self.masses.append((float(stats["self"][0].sum()), float(stats["cross"][0].sum())))
        return [torch.zeros(0, dtype=torch.long)]


class _ToleranceRule(PrunePolicy):
    """One sample at tolerance alpha: delete P_self & P_cross until the budget is met."""

    def __init__(self, alpha, masses, hidden_size, intermediate_size, reduction):
        self.alpha, self.masses = alpha, masses
        self.sizes, self.reduction = (hidden_size, intermediate_size), reduction

    def begin(self, visual_counts):
        self.alive = visual_counts[0]
        self.budget = FlopsBudget(self.alive, len(self.masses), *self.sizes, self.reduction)
        self.deletions, self.stopped = [], False
        return []

    def statistic(self, layer_idx):
        self.stopped = self.stopped or self.budget.met(layer_idx, self.alive)
        if self.stopped:
            self.deletions.append(0)
            return None
        return SELF_CROSS

    def choose(self, layer_idx, stats, alive):
        self_mass, cross_mass = self.masses[layer_idx]
        chosen = fit_deletions(stats["self"][0], stats["cross"][0], self_mass, cross_mass, self.alpha)
        self.budget.spend(self.alive, self.alive - len(chosen))
        self.alive -= len(chosen)
        self.deletions.append(len(chosen))
        return [chosen]


def read_questions(question_file, image_folder, samples):
    """Questions in model_vqa_loader's jsonl format, checked before any model is loaded."""
    if not os.path.isfile(question_file):
        raise FileNotFoundError(f"question file {question_file} does not exist")
    questions = []
    with open(question_file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"question file {question_file}, line {number}: not JSON ({err})") from None
            missing = [k for k in ("question_id", "image", "text") if k not in record]
            if missing:
                raise ValueError(f"question file {question_file}, line {number}: missing {', '.join(missing)} "
                                 "(each line needs question_id, image, text)")
            questions.append(record)
    if not questions:
        raise ValueError(f"question file {question_file} holds no questions")
    if samples is not None:
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples={samples!r} must be a positive integer")
        if samples > len(questions):
            raise ValueError(f"samples={samples} but question file {question_file} holds {len(questions)} questions")
        questions = questions[:samples]
    for record in questions:
        path = os.path.join(image_folder, record["image"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} of question {record['question_id']!r} does not exist")
    return questions


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _encode_sample(model, tokenizer, image_processor, record, image_folder, conv_mode):
    """Spliced embeddings (1, L, d) and the visual span, as model_vqa_loader builds them."""
    from PIL import Image
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    text = record["text"]
    if model.config.mm_use_im_start_end:
        text = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN + "\n" + text
    else:
        text = DEFAULT_IMAGE_TOKEN + "\n" + text
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], text)
    conv.append_message(conv.roles[1], None)
    image = Image.open(os.path.join(image_folder, record["image"])).convert("RGB")
    pixels = process_images([image], image_processor, model.config)[0]
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
    if placeholders != 1:
        raise ValueError(f"question {record['question_id']!r}: the prompt holds {placeholders} image "
                         f"placeholders with conv mode {conv_mode!r}; fitting needs exactly one")
    with torch.inference_mode():
        embeds = model.prepare_inputs_labels_for_multimodal(
            input_ids[None].to(model.device), None, None, None, None,
            pixels[None].to(dtype=model.dtype, device=model.device), image_sizes=[image.size])[4]
    start = int((input_ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    visual = embeds.shape[1] - (input_ids.shape[0] - 1)
    if embeds.shape[1] == getattr(model.config, "tokenizer_model_max_length", None):
        raise ValueError(f"question {record['question_id']!r}: the prompt reaches tokenizer_model_max_length "
                         f"({embeds.shape[1]}) and may be truncated")
    return embeds, (start, start + visual)


def _average_recipe(per_sample, counts, num_visual_tokens, name):
    """Floor of the per-layer mean deletions, each sample scaled to ``num_visual_tokens``."""
    scaled = [scale_deletions(Recipe(name, n, d), num_visual_tokens)[0] if n != num_visual_tokens else d
              for d, n in zip(per_sample, counts)]
    return [sum(column) // len(column) for column in zip(*scaled)]


def _conv_mode(model_name, conv_mode):
    from llava.conversation import conv_templates

    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        conv_mode = conv_mode + "_mmtag"
    if conv_mode not in conv_templates:
        raise ValueError(f"conv_mode={conv_mode!r} is unknown; accepted: {', '.join(sorted(conv_templates))}")
    return conv_mode


def check_reduction(reduction):
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 < reduction < 1:
        raise ValueError(f"reduction={reduction!r} must lie strictly between 0 and 1 (e.g. 0.6)")


def check_targets(targets):
    """``targets``: (reduction, output path) pairs, at least one, no reduction or path twice."""
    targets = list(targets)
    if not targets:
        raise ValueError("no reduction to fit a recipe for")
    for reduction, _ in targets:
        check_reduction(reduction)
    for index, name in ((0, "reduction"), (1, "output path")):
        values = [target[index] for target in targets]
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{name} {', '.join(twice)} given twice: one recipe per reduction, each to its own file")
    return targets


UPSTREAM, TRANSFORMERS = "upstream", "transformers"
UPSTREAM_MODEL_TYPES = ("llava_llama", "llava_mistral", "llava_mpt")
QWEN_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
TRANSFORMERS_MODEL_TYPES = ("llava", "llava_next") + QWEN_MODEL_TYPES


def _read_config(model_path):
    if os.path.isdir(model_path):
        path = os.path.join(model_path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model {model_path}: no config.json in it; expected a LLaVA checkpoint folder")
    elif os.path.isabs(model_path) or model_path.startswith(".") or model_path.count("/") != 1:
        raise FileNotFoundError(f"model {model_path}: no such folder (expected a checkpoint folder or a hub name "
                                "such as liuhaotian/llava-v1.5-7b)")
    else:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model_path, "config.json")
        except Exception as err:  # not a folder, and the hub (or its cache) does not have it either
            raise FileNotFoundError(f"model {model_path}: not a folder, and its config.json could not be had "
                                    f"from the Hugging Face hub ({type(err).__name__}: {err})") from None
    return read_json_object(path, f"model {model_path}: {path}", ValueError)


def checkpoint_kind(model_path):
    """``"upstream"`` (upstream llava's ``Llava*ForCausalLM``) or ``"transformers"``
    (transformers' LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL and Qwen3-VL classes), from
    the checkpoint's config.json; ValueError naming the accepted kinds otherwise."""
    config = _read_config(model_path)
    model_type = config.get("model_type")
    if model_type in UPSTREAM_MODEL_TYPES or "mm_vision_tower" in config:
        return UPSTREAM
    if model_type in TRANSFORMERS_MODEL_TYPES:
        return TRANSFORMERS
    raise ValueError(f"model {model_path}: config.json has model_type {model_type!r}; fitprune-fit accepts "
                     f"transformers checkpoints (model_type {', '.join(TRANSFORMERS_MODEL_TYPES)}) and "
                     f"upstream LLaVA checkpoints (model_type {', '.join(UPSTREAM_MODEL_TYPES)}, "
                     "or any with mm_vision_tower)")


def fit_loaded(model, tokenizer, image_processor, model_name, questions, question_file, image_folder, targets,
               conv_mode="llava_v1", progress=True, tolerance=0.01, started=None, metadata=None):
    """:func:`~.checkpoint.fit_recipes` on an upstream LLaVA model already in memory (``questions`` from
    :func:`read_questions`); ``wall_time_s`` counts from ``started`` (default: now)."""
    conv_mode = _conv_mode(model_name, conv_mode)

    def encode(record):
        return _encode_sample(model, tokenizer, image_processor, record, image_folder, conv_mode)

    return fit_encoded(model.get_model(), encode, model_name, questions, question_file, targets,
                       progress, tolerance, started, dict(metadata or {}), {"conv_mode": conv_mode})


def refuse_applied_plugin():
    """A recipe is fitted on the unpruned model: refuse while the plugin prunes."""
    from ...runtime import backends

    if backends.is_applied() and backends.session().config.prunes:
        raise ValueError(f"the plugin is applied and prunes (method {backends.session().config.method}); a "
                         "FitPrune recipe is fitted on the unpruned model: unset the FREEPRUNER_* / FITPRUNE_* "
                         "variables (or call llava_freepruner.remove()) before fitting")


def fit_encoded(decoder, encode, model_name, questions, question_file, targets, progress=True,
                tolerance=0.01, started=None, metadata=None, prompt_metadata=None):
    """The fit shared by every kind of checkpoint: one recipe per ``(reduction, out)`` of
    ``targets``, each written to its ``out`` (JSON) as soon as it is fitted; returns them.

    ``encode(record) -> (embeds (1, L, d), (start, end))`` or ``(embeds, (start, end),
    decoder_kwargs)``: one question's spliced decoder input, its visual span and what else the
    decoder is called with (a Qwen-VL decoder: its M-RoPE ``position_ids``, Qwen3-VL's
    deepstack rows), computed once per sample, as are the unpruned attention masses;
    ``decoder``: the language model's decoder (the module holding ``layers``), run on the
    cached inputs in every bisection round of every reduction. ``wall_time_s``: seconds
    from ``started`` (default: now) to the recipe's write."""
    from tqdm import tqdm

    targets = check_targets(targets)
    refuse_applied_plugin()
    for _, out in targets:      # a missing folder fails now, not after the fit
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    started = time.time() if started is None else started
    config = decoder.config
    sizes = (config.hidden_size, config.intermediate_size)
    rounds = rounds_for(tolerance)
    bar = tqdm(total=len(questions) * (2 + (rounds + 1) * len(targets)), desc="FitPrune fit", disable=not progress)
    cached = []
    for record in questions:
        encoded = encode(record)
        cached.append(encoded if len(encoded) == 3 else (*encoded, {}))
        bar.update(1)
    counts = [span[1] - span[0] for _, span, _ in cached]
    num_visual = int(statistics.median(counts))

    def run(policy, embeds, span, extra):
        attach(decoder, policy)
        begin_prefill(decoder, [[span]])
        with torch.inference_mode():
            decoder(inputs_embeds=embeds, use_cache=False, **extra)
        bar.update(1)

    recipes = []
    try:
        masses = []
        for embeds, span, extra in cached:
            observer = _ReferenceMasses()
            run(observer, embeds, span, extra)
            masses.append(observer.masses)

        for reduction, out in targets:
            def evaluate(alpha):
                per_sample = []
                for (embeds, span, extra), sample_masses in zip(cached, masses):
                    rule = _ToleranceRule(alpha, sample_masses, *sizes, reduction)
                    run(rule, embeds, span, extra)
                    per_sample.append(rule.deletions)
                deletions = _average_recipe(per_sample, counts, num_visual, model_name)
                achieved = flops_reduction(num_visual, deletions, *sizes)
                return achieved >= reduction, (deletions, achieved)

            try:
                alpha, (deletions, achieved) = smallest_passing_alpha(evaluate, rounds)
            except ValueError as err:
                written = [path for (_, path), _ in zip(targets, recipes)]
                raise ValueError(f"reduction {reduction:g}: {err}"
                                 + (f" (written before it: {', '.join(written)})" if written else "")) from None
            recipe_metadata = dict(metadata or {}, target_reduction=reduction, achieved_reduction=round(achieved, 6))
            recipe_metadata.update({
                "alpha": alpha, "samples": len(questions), "calibration_file": os.path.abspath(question_file),
                "calibration_sha256": _sha256(question_file), **(prompt_metadata or {}),
                "hidden_size": sizes[0], "intermediate_size": sizes[1],
                "wall_time_s": round(time.time() - started, 2)})
            recipe = Recipe(model_name, num_visual, deletions, recipe_metadata)
            recipe.save(out)
            recipes.append(recipe)
    finally:
        detach(decoder)
        bar.close()
    return recipes
