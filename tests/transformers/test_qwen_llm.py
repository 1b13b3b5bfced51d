"""Decoder-side pruning (FitPrune, FastV, DART) in the language models of transformers'
Qwen2-VL, Qwen2.5-VL and Qwen3-VL, under unchanged processor + generate().

The reference for a pruned prompt is the unpatched model with each deleted token's key
hidden from every query of the layers after the one that deleted it (a per-layer
attention mask on the model's own layers): the model's own code, its own M-RoPE ids and
Qwen3-VL's deepstack rows compute what the pruned model must produce at the tokens that
stay.
"""

import json
from types import SimpleNamespace

import chat_generation
import pytest
import torch
from chat_generation import cache_of, inputs_for, layer_lengths
from qwen_checks import KeptSpy, full_positions, half

from llava_freepruner.fixtures import hf_tiny_qwen
from llava_freepruner.runtime import llm as llm_runtime
from llava_freepruner.config import ConfigError
from llava_freepruner.runtime.fitprune import Recipe
from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen

KINDS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
# Qwen3-VL-MoE: Qwen3-VL's attention over mixture-of-experts MLPs (4.57's return router logits too)
WITH_MOE = KINDS + ["qwen3_vl_moe"]
METHODS = ["fitprune", "fastv", "dart"]
LAYERS = 4
QUESTIONS = ["What is in the image?", "Describe the picture in one sentence."]
PHOTOS = ["astronaut", "rocket"]             # 64 and 54 merged tokens on every kind
# FitPrune: deletions from layer 0 on, so Qwen3-VL's deepstack rows (added after layers 0
# and 1) meet a shortened sequence; scaled for the image of 54 tokens: 8, 7, 5, 0
RECIPE = Recipe("tiny-qwen", 64, [10, 8, 6, 0])


def spec(kind):
    return TinyQwen(kind=kind, llm_layers=LAYERS)


def generate(model, inputs, **kwargs):
    return chat_generation.generate(model, inputs, **{"max_new_tokens": 4, **kwargs})


def fields_of(method, tmp_path, recipe=RECIPE, ratio=0.5):
    """The plugin's configuration fields of a decoder-side ``method`` alone: FitPrune with
    ``recipe`` (written to a file), FastV at layer 1 or DART (layer 2) keeping ``ratio``."""
    if method == "fitprune":
        path = tmp_path / "recipe.json"
        recipe.save(str(path))
        return {"vision_method": None, "llm_method": method, "fitprune_recipe": str(path)}
    return {"vision_method": None, "llm_method": method, "ratio": ratio, "fastv_layer": 1}


def deletions_of(method, count):
    """Per layer, the tokens of an image of ``count`` merged tokens ``method`` deletes."""
    if method == "fitprune":
        from llava_freepruner.runtime.budget import scale_deletions

        return scale_deletions(RECIPE, count)[0]
    layer = 1 if method == "fastv" else 2
    return [count - half(count) if i == layer else 0 for i in range(LAYERS)]


def alive_after(deletions, count):
    alive = []
    for k in deletions:
        count -= k
        alive.append(count)
    return alive


def decoder_of(model):
    return model.model.language_model


@pytest.fixture
def pair(qwen_models, photos):
    """(model, processor, inputs, counts) of two left-padded prompts whose images make 64 and 54 tokens."""
    def make(kind):
        model, processor = qwen_models(spec(kind))
        inputs = inputs_for(processor, [photos[name] for name in PHOTOS], QUESTIONS)
        counts = [int(t * h * w) // 4 for t, h, w in inputs["image_grid_thw"].tolist()]
        assert counts == [64, 54]
        return model, processor, inputs, counts
    return make


# -- the reference: the unpatched model with deleted keys hidden -----------------------------------


def _layer_cache(kwargs):
    return next((kwargs[name] for name in ("cache", "past_key_values", "past_key_value")
                 if kwargs.get(name) is not None), None)


class MaskedReference:
    """Pre-hooks on the unpatched decoder's layers: at layer i, every key at a prompt position
    whose ``deleted_at`` (batch, length) is below i is hidden from every query but its own."""

    def __init__(self, model, deleted_at):
        self.layers = decoder_of(model).layers
        self.deleted_at = deleted_at

    def _hook(self, idx):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            batch, q_len = hidden.shape[:2]
            cache = _layer_cache(kwargs)
            past = cache.get_seq_length(idx) if cache is not None else 0
            keys = past + q_len
            queries = torch.arange(past, past + q_len)
            hide = torch.zeros(batch, keys, dtype=torch.bool)
            known = min(keys, self.deleted_at.shape[1])
            hide[:, :known] = self.deleted_at[:, :known] < idx
            mask = kwargs.get("attention_mask")
            if mask is None:
                allowed = torch.arange(keys)[None, :] <= queries[:, None]
                allowed = allowed.expand(batch, -1, -1)
            elif mask.dtype == torch.bool:
                allowed = mask[:, 0]
            else:
                allowed = mask[:, 0] == 0
            allowed = (allowed & ~hide[:, None, :]) | (torch.arange(keys)[None, :] == queries[:, None])
            if mask is None or mask.dtype == torch.bool:
                kwargs["attention_mask"] = allowed[:, None]
            else:
                kwargs["attention_mask"] = torch.zeros(allowed.shape, dtype=mask.dtype).masked_fill_(
                    ~allowed, torch.finfo(mask.dtype).min)[:, None]
            return args, kwargs
        return hook

    def __enter__(self):
        self.handles = [layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                        for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


NEVER = 1 << 20


def deleted_at(record, visual):
    """(batch, length): the layer that deleted the visual token at each position, NEVER elsewhere.
    ``visual``: per row, the positions of the decoder's visual tokens in sequence order."""
    table = torch.full((len(visual), max(int(v.max()) for v in visual) + 1), NEVER, dtype=torch.long)
    for row, (positions, layers) in enumerate(zip(visual, record.drop_layer)):
        layers = torch.tensor(layers)
        assert layers.numel() == positions.numel()
        table[row, positions] = torch.where(layers >= 0, layers, NEVER)
    return table


def image_positions(model, inputs):
    image = inputs["input_ids"] == model.config.image_token_id
    return [row.nonzero().flatten() for row in image]


# -- tests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WITH_MOE)
@pytest.mark.parametrize("method", METHODS)
def test_keeping_every_token_gives_the_unpatched_tokens_and_scores(kind, method, pair, plugin, tmp_path):
    model, _, inputs, _ = pair(kind)
    reference = generate(model, inputs)
    plugin(**fields_of(method, tmp_path, recipe=Recipe("none", 64, [0] * LAYERS), ratio=1.0))
    out = generate(model, inputs)
    # bit for bit, also where FastV's and DART's layer runs its own attention (it deletes nothing)
    assert torch.equal(out.sequences, reference.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, reference.scores))
    record = llm_runtime.last_record(decoder_of(model))
    assert record.visual_out == [[64] * LAYERS, [54] * LAYERS]


@pytest.mark.parametrize("kind", WITH_MOE)
@pytest.mark.parametrize("method", METHODS)
def test_pruned_generation_equals_the_unpatched_model_with_the_deleted_keys_hidden(kind, method, pair, photos,
                                                                                   plugin, tmp_path):
    model, processor, inputs, counts = pair(kind)
    steps = 4
    plugin(**fields_of(method, tmp_path))
    batch = generate(model, inputs, max_new_tokens=steps)
    record = llm_runtime.last_record(decoder_of(model))
    plan = [deletions_of(method, n) for n in counts]
    assert record.visual_out == [alive_after(d, n) for d, n in zip(plan, counts)]
    # layer l's cache holds the prompt less what layers before l deleted (the sample deleting fewer sets the
    # width), plus one position per decode step
    length = inputs["input_ids"].shape[1]
    assert layer_lengths(cache_of(batch)) == [length - min(sum(d[:l]) for d in plan) + steps - 1
                                              for l in range(LAYERS)]
    assert all(torch.isfinite(s).all() for s in batch.scores)
    # each prompt alone: the same tokens, and its own cache lengths
    for row, (name, question) in enumerate(zip(PHOTOS, QUESTIONS)):
        single_inputs = inputs_for(processor, [photos[name]], [question])
        single = generate(model, single_inputs, max_new_tokens=steps)
        own = single_inputs["input_ids"].shape[1]
        made = single.sequences.shape[1] - own          # fewer than steps where it ends (EOS) early
        assert torch.equal(single.sequences[0, own:], batch.sequences[row, length:length + made])
        for a, b in zip(single.scores, batch.scores):
            torch.testing.assert_close(a[0], b[row], rtol=1e-4, atol=1e-5)
        assert layer_lengths(cache_of(single)) == [own - sum(plan[row][:l]) + made - 1 for l in range(LAYERS)]
    import llava_freepruner

    llava_freepruner.remove()
    with MaskedReference(model, deleted_at(record, image_positions(model, inputs))):
        reference = generate(model, inputs, max_new_tokens=steps)
    assert torch.equal(batch.sequences, reference.sequences)
    for step, expected in zip(batch.scores, reference.scores):
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-5)
    unpruned = generate(model, inputs, max_new_tokens=1)
    assert not torch.allclose(batch.scores[0], unpruned.scores[0], atol=1e-3)     # the deletions mattered


@pytest.mark.parametrize("kind", KINDS)
def test_freepruner_then_fitprune_equals_the_masked_reference_and_batch_equals_singles(kind, pair, photos, plugin,
                                                                                      monkeypatch, tmp_path):
    model, processor, inputs, counts = pair(kind)
    positions = full_positions(model, inputs)
    spy = KeptSpy(monkeypatch)
    stats = tmp_path / "stats.jsonl"
    recipe = tmp_path / "recipe.json"
    RECIPE.save(str(recipe))
    plugin(vision_method="freepruner", llm_method="fitprune", ratio=0.5, fitprune_recipe=str(recipe),
           stats=str(stats))
    steps = 3
    batch = generate(model, inputs, max_new_tokens=steps)
    record = llm_runtime.last_record(decoder_of(model))
    kept = [half(n) for n in counts]
    assert [k.numel() for k in spy.kept] == kept
    plan = [deletions_of("fitprune", n) for n in kept]          # the recipe scaled to the kept tokens
    assert record.visual_out == [alive_after(d, n) for d, n in zip(plan, kept)]
    length = inputs["input_ids"].shape[1]
    width = length - min(n - k for n, k in zip(counts, kept))
    assert layer_lengths(cache_of(batch)) == [width - min(sum(d[:l]) for d in plan) + steps - 1
                                              for l in range(LAYERS)]
    for row, (name, question) in enumerate(zip(PHOTOS, QUESTIONS)):
        single = generate(model, inputs_for(processor, [photos[name]], [question]), max_new_tokens=steps)
        assert torch.equal(single.sequences[0, -steps:], batch.sequences[row, -steps:])
        torch.testing.assert_close(single.scores[0][0], batch.scores[0][row], rtol=1e-4, atol=1e-5)
    import llava_freepruner

    llava_freepruner.remove()
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    assert [r["llm_visual_alive"] for r in records[:2]] == record.visual_out
    # the reference: the vision side's dropped placeholders masked out, the LLM side's deletions
    # hidden from the layers after theirs, every position id the full prompt's
    keep = inputs["attention_mask"].bool().clone()
    visual = []
    for row, (columns, chosen) in enumerate(zip(image_positions(model, inputs), spy.kept[:2])):
        dropped = torch.ones(columns.numel(), dtype=torch.bool)
        dropped[chosen] = False
        keep[row, columns[dropped]] = False
        visual.append(columns[~dropped])
    with MaskedReference(model, deleted_at(record, visual)), torch.no_grad():
        reference = model(**{**inputs, "attention_mask": keep.long()}, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(batch.scores[0], reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_a_video_is_pruned_inside_the_llm(kind, qwen_models, plugin, tmp_path):
    from test_qwen import video_inputs

    model, processor = qwen_models(spec(kind))
    inputs, cells = video_inputs(model, processor, frames=2, grid=(8, 12))
    plugin(vision_method=None, llm_method="fastv", ratio=0.5, fastv_layer=1)
    out = generate(model, inputs, max_new_tokens=2)
    record = llm_runtime.last_record(decoder_of(model))
    tokens = 2 * cells
    assert record.visual_out == [[tokens] + [half(tokens)] * (LAYERS - 1)]
    length = inputs["input_ids"].shape[1]
    assert layer_lengths(cache_of(out)) == [length + 1] * 2 + [length - (tokens - half(tokens)) + 1] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_dart_key_norms_are_those_of_the_keys_the_layer_caches(kind, pair):
    """DART ranks by the L1 norm of layer 1's keys as that layer uses them: Qwen3-VL's per-head
    key norm, the M-RoPE rotation (mixed by sections on transformers 4.x), heads repeated."""
    from llava_freepruner.runtime.llm import dart, decoders

    model, _, inputs, _ = pair(kind)
    decoder = decoder_of(model)
    attn = decoder.layers[1].self_attn
    seen = {}

    def keep_keys(module, args, output):
        seen["keys"] = output

    def keep_kwargs(module, args, kwargs):
        seen["kwargs"] = kwargs

    handles = [attn.k_proj.register_forward_hook(keep_keys),
               decoder.layers[1].register_forward_pre_hook(keep_kwargs, with_kwargs=True)]
    try:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    convention = decoders.calling_convention(decoder)
    cos, sin = convention.cos_sin(attn, seen["kwargs"], None, None)
    with torch.no_grad():
        norms = dart.key_norms(attn, seen["keys"], cos, sin)
    cached = cache_of(out)
    keys = cached.layers[1].keys if hasattr(cached, "layers") else cached.key_cache[1]
    expected = keys.abs().sum(dim=-1).sum(dim=1) * attn.num_key_value_groups
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-4)


# -- fitprune-fit on a saved checkpoint ---------------------------------------------------------------

FIT_QUESTIONS = ["What is in the image?", "Describe the picture in one sentence.", "How many objects are there?",
                 "What is on the left?"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, photos):
    """(question file, image folder): one question per photo."""
    root = tmp_path_factory.mktemp("qwen_fit_calibration")
    (root / "images").mkdir()
    lines = []
    for number, (name, image) in enumerate(sorted(photos.items())):
        image.save(root / "images" / f"{name}.png")
        lines.append(json.dumps({"question_id": f"q{number}", "image": f"{name}.png",
                                 "text": FIT_QUESTIONS[number % len(FIT_QUESTIONS)]}))
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return root / "questions.jsonl", root / "images"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``checkpoints(kind)`` -> the folder of a saved tiny checkpoint, written once per kind."""
    root, saved = tmp_path_factory.mktemp("qwen_fit_checkpoints"), {}

    def get(kind):
        if kind not in saved:
            saved[kind] = hf_tiny_qwen.save(spec(kind), str(root / f"tiny-{kind}"))
        return saved[kind]
    return get


@pytest.mark.parametrize("kind", KINDS)
def test_the_cached_decoder_input_reproduces_the_models_logits(kind, checkpoints, calibration, photos):
    from llava_freepruner.tools.fitprune_fit import transformers_fit
    from llava_freepruner.tools.prompts import image_question_inputs

    model, processor = transformers_fit.load(checkpoints(kind), "cpu")
    questions, images = calibration
    record = json.loads(questions.read_text().splitlines()[0])
    embeds, (start, end), extra = transformers_fit.encode_sample(model, processor, record, str(images))
    inputs = image_question_inputs(processor, photos[record["image"][:-4]], record["text"])
    image = inputs["input_ids"][0] == model.config.image_token_id
    assert image[start:end].all() and int(image.sum()) == end - start
    assert torch.equal(extra["position_ids"], full_positions(model, inputs))       # M-RoPE ids, not 1-D
    assert ("deepstack_visual_embeds" in extra) == (kind == "qwen3_vl")
    with torch.no_grad():
        reference = model(**inputs).logits
        hidden = decoder_of(model)(inputs_embeds=embeds, use_cache=False, **extra).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), reference)


@pytest.mark.parametrize("kind", KINDS)
def test_fitprune_fit_writes_a_recipe_that_prunes_generate(kind, checkpoints, calibration, photos, plugin, tmp_path,
                                                           capsys):
    import statistics

    import llava_freepruner
    from llava_freepruner.runtime.budget import scale_deletions
    from llava_freepruner.tools.cli import main
    from llava_freepruner.config import from_env
    from llava_freepruner.runtime.fitprune import flops_reduction, load_recipe
    from llava_freepruner.tools.fitprune_fit import transformers_fit
    from llava_freepruner.tools.prompts import image_question_inputs

    folder = checkpoints(kind)
    questions, images = calibration
    out = tmp_path / "recipe.json"
    code = main(["fitprune-fit", "--model-path", folder, "--question-file", str(questions), "--image-folder",
                 str(images), "--reduction", "0.5", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    recipe = load_recipe(str(out))
    model, processor = transformers_fit.load(folder, "cpu")
    text = model.config.get_text_config()
    token = model.config.image_token_id
    counts = [int((image_question_inputs(processor, image, "hi")["input_ids"] == token).sum())
              for _, image in sorted(photos.items())]
    assert record["model_type"] == kind and record["samples"] == 4 and record["prompt"] == "chat_template"
    assert recipe.num_layers == LAYERS == record["num_layers"]
    assert recipe.num_visual_tokens == int(statistics.median(counts))     # images of several sizes: the median
    achieved = flops_reduction(recipe.num_visual_tokens, recipe.deletions, text.hidden_size, text.intermediate_size)
    assert achieved >= 0.5 and record["achieved_reduction"] == pytest.approx(achieved, abs=1e-6)
    assert sum(recipe.deletions) > 0
    print(f"{kind}: visual tokens {counts}, recipe for {recipe.num_visual_tokens}: {list(recipe.deletions)}, "
          f"achieved {achieved:.4f}, alpha {record['alpha']}")

    # the recipe file, as FITPRUNE_RECIPE, prunes the model's decoder under plain generate()
    stats = tmp_path / "stats.jsonl"
    plugin()
    llava_freepruner.apply(from_env({"FREEPRUNER_METHOD": "fitprune", "FITPRUNE_RECIPE": str(out),
                                     "FREEPRUNER_STATS": str(stats)}))
    inputs = image_question_inputs(processor, photos["astronaut"], "What is in the image?")
    steps = 3
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True)
    llava_freepruner.remove()
    count = int((inputs["input_ids"] == token).sum())
    deletions = scale_deletions(recipe, count)[0]
    first = json.loads(stats.read_text().splitlines()[0])
    assert first["llm_visual_alive"] == alive_after(deletions, count) and first["llm_visual_alive"][-1] < count
    length = inputs["input_ids"].shape[1]
    assert layer_lengths(cache_of(output)) == [length - sum(deletions[:l]) + steps - 1 for l in range(LAYERS)]


@pytest.mark.parametrize("kind", KINDS)
def test_beams_and_several_return_sequences_prune_each_repeated_row_like_its_prompt(kind, pair, plugin):
    model, _, inputs, counts = pair(kind)
    plugin(vision_method="freepruner", llm_method="dart", ratio=0.5)
    length = inputs["input_ids"].shape[1]
    beams = generate(model, inputs, num_beams=2, max_new_tokens=3)
    assert torch.equal(beams.sequences[:, :length], inputs["input_ids"])
    kept = [half(n) for n in counts]
    expected = [[n, n, half(n), half(n)] for n in kept for _ in range(2)]
    assert llm_runtime.last_record(decoder_of(model)).visual_out == expected
    torch.manual_seed(0)
    several = generate(model, inputs, do_sample=True, top_k=5, num_return_sequences=2, max_new_tokens=3)
    assert torch.equal(several.sequences[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))
    assert llm_runtime.last_record(decoder_of(model)).visual_out == expected


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WITH_MOE)
def test_an_attention_implementation_the_pruning_layers_cannot_follow_is_refused_before_the_weights(
        kind, plugin, tmp_path):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    AttentionInterface.register("renamed_sdpa", sdpa_attention_forward)
    folder = hf_tiny_qwen.save(spec(kind), str(tmp_path / kind))
    cls = hf_tiny_qwen._classes(kind)[1]
    assert cls.from_pretrained(folder, attn_implementation="renamed_sdpa") is not None   # unpatched: loads
    plugin(vision_method=None, llm_method="dart", ratio=0.5)
    with pytest.raises(ConfigError, match=r"FREEPRUNER_METHOD=dart prunes inside the LLM.*"
                                          r"attn_implementation='renamed_sdpa'"):
        cls.from_pretrained(folder, attn_implementation="renamed_sdpa")
    assert cls.from_pretrained(folder, attn_implementation="eager") is not None
    plugin(vision_method=None, llm_method="fastv", ratio=0.5, fastv_layer=LAYERS)
    with pytest.raises(ConfigError, match=rf"FREEPRUNER_METHOD=fastv: FastV layer={LAYERS} does not exist"):
        cls.from_pretrained(folder)


# -- host syncs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_models():
    """fp16 models (the GPU code path), built once per kind."""
    built = {}

    def get(kind):
        if kind not in built:
            model, processor = hf_tiny_qwen.build(spec(kind))
            built[kind] = (model.half(), processor)
        return built[kind]
    return get


def count_generate(model, inputs, new_tokens=3):
    from llava_freepruner.tools.bench.count import PhaseMarks
    from llava_freepruner.tools.bench.opcount import OpCounter

    parts = SimpleNamespace(vision_tower=model.model.visual, decoder=decoder_of(model))
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        counter = OpCounter("setup")
        marks = PhaseMarks(parts, counter)
        try:
            with counter:
                model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        finally:
            marks.remove()
    assert marks.prefilled and marks.decode_steps == new_tokens - 1
    return counter.tallies, marks.decode_steps


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_decode_steps_read_nothing_back_and_the_pruned_prefill_at_most_twice(kind, method, half_models, photos, plugin,
                                                                      tmp_path):
    model, processor = half_models(kind)
    plugin(**fields_of(method, tmp_path))
    per_batch = {}
    names = PHOTOS + ["coffee", "chelsea"]
    for batch in (1, 2, 4):
        inputs = inputs_for(processor, [photos[name] for name in names[:batch]], (QUESTIONS * 2)[:batch])
        inputs["pixel_values"] = inputs["pixel_values"].half()
        tallies, steps = count_generate(model, inputs)
        assert tallies["prefill"].ops["plugin"] > 0, "the runtime did not prune in the prefill"
        # the vision side's reads (the image grids, before the tower) are counted by its own tests
        assert tallies["prefill"].syncs["plugin"] <= 2, dict(tallies["prefill"].sync_sites)
        assert tallies["decode"].syncs["plugin"] == 0, dict(tallies["decode"].sync_sites)
        per_batch[batch] = (tallies["prefill"].ops["plugin"], tallies["decode"].ops["plugin"] / steps)
    # no per-sample work: the plugin's ops in the prefill and per decode step do not grow with the batch
    # (a padded batch's decode steps build masks a single prompt's do not need: 2 against 4)
    assert per_batch[4][0] <= 1.15 * per_batch[1][0], per_batch
    assert per_batch[4][1] <= 1.15 * per_batch[2][1], per_batch
