"""The bench: end to end on a tiny checkpoint, the oracle's token count, FLOPs, inputs."""

import json

import pytest
import torch

from llava_freepruner.bench import archs, flops
from llava_freepruner.bench.runner import Settings, plugin_config
from llava_freepruner.cli import main

RATIOS = (1.0, 0.5)
METHODS = ("cls_topk", "freepruner", "grid", "random", "visionzip", "divprune")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from llava_freepruner import tiny

    return tiny.build(str(tmp_path_factory.mktemp("bench-tiny")))


@pytest.fixture(scope="module")
def results(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    code = main(["bench", "--model", checkpoint, "--methods", ",".join(METHODS),
                 "--ratios", ",".join(map(str, RATIOS)), "--repeats", "2",
                 "--warmup", "0", "--new-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    with open(out / "results.json") as handle:
        return out, json.load(handle)


# --- end to end -------------------------------------------------------------------


def test_bench_writes_one_well_formed_record_per_method_and_ratio(results):
    out, data = results
    records = data["records"]
    assert sorted((r["method"], r["ratio"]) for r in records) == sorted(
        (m, r) for m in ("oracle",) + METHODS for r in RATIOS)
    numeric = ("vision_ms", "select_ms", "llm_prefill_ms", "ttft_ms", "decode_tok_s", "peak_mem_mb", "prefill_flops")
    for r in records:
        assert r["visual_tokens"] == (576 if r["ratio"] == 1.0 else 288)
        for key in numeric:
            # select_ms may be 0: the oracle and ratio 1.0 select nothing
            assert isinstance(r[key], (int, float)) and (r[key] > 0 or key == "select_ms" and r[key] == 0), \
                (r["method"], key, r[key])
        # Stages are parts of the time to first token.
        assert r["ttft_ms"] > r["llm_prefill_ms"] and r["ttft_ms"] > r["vision_ms"]
        assert r["repeats"] == 2 and len(r["layer_tokens"]) == 2
        assert r["layer_tokens"] == [r["llm_input_tokens"]] * 2
        assert r["prefill_flops"] == r["llm_prefill_flops"] + r["vision_flops"] + r["projector_flops"]
    assert data["meta"]["weights"] == "checkpoint" and data["meta"]["llm_layers"] == 2
    assert data["meta"]["backend"] == "upstream"
    text = (out / "results.md").read_text()
    assert text.count("\n| oracle |") == 2 and "Command: `python -m llava_freepruner bench" in text
    with open(out / "time_vs_tokens.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_every_method_is_compared_with_the_oracle_of_its_ratio(results):
    # Structure only: which method is faster is the benchmark's output, not something to assert.
    records = results[1]["records"]
    by_key = {(r["method"], r["ratio"]): r for r in records}
    assert {r["ratio"] for r in records if r["method"] == "oracle"} == set(RATIOS)
    for r in records:
        oracle = by_key[("oracle", r["ratio"])]
        assert r["efficiency"] == pytest.approx(oracle["ttft_ms"] / r["ttft_ms"], rel=1e-3)
        assert r["llm_input_tokens"] == oracle["llm_input_tokens"]
    assert all(by_key[("oracle", r)]["efficiency"] == 1.0 for r in RATIOS)


def test_fewer_visual_tokens_mean_fewer_prefill_flops(results):
    records = results[1]["records"]
    for method in ("oracle",) + METHODS:
        full, half = (next(r for r in records if r["method"] == method and r["ratio"] == x) for x in RATIOS)
        assert half["llm_prefill_flops"] < full["llm_prefill_flops"]
        assert half["vision_flops"] == full["vision_flops"]


def test_side_by_side_lines_up_the_rows_of_two_runs(results, tmp_path, capsys):
    from llava_freepruner.bench import side_by_side

    out, data = results
    other = tmp_path / "other"
    other.mkdir()
    twin = dict(data, meta=dict(data["meta"], backend="transformers"),
                records=[r for r in data["records"] if r["method"] != "grid"])
    (other / "results.json").write_text(json.dumps(twin))
    assert side_by_side.main([str(out), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")]
    rows = {tuple(c[:2]): c for c in cells}
    header = rows[("method", "ratio")]
    mine, theirs = (side_by_side.label(d["meta"]) for d in (data, twin))
    assert theirs.startswith("transformers ")
    assert header.index(f"efficiency ({mine})") + 1 == header.index(f"efficiency ({theirs})")
    assert rows[("oracle", "0.5")][header.index(f"efficiency ({theirs})")] == "1.000"
    assert rows[("grid", "1.0")][header.index(f"TTFT ms ({theirs})")] == "n/a"
    assert rows[("grid", "1.0")][header.index(f"visual tokens ({mine})")] == "576"
    assert side_by_side.main([str(out), str(out)]) == 2
    assert side_by_side.main([str(out), str(tmp_path / "missing")]) == 2
    assert "holds no results.json" in capsys.readouterr().err


# --- the oracle feeds K tokens to the LLM -------------------------------------------------


def test_oracle_feeds_exactly_k_visual_tokens_to_the_llm(checkpoint):
    import llava_freepruner
    from llava_freepruner import backends
    from llava_freepruner.bench import model as bench_model, oracle

    bench = bench_model.load_checkpoint(checkpoint, "cpu", torch.float32)
    inputs = bench_model.make_inputs(bench, batch_size=2, text_tokens=0)
    seen = []
    handle = bench.model.get_model().register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape) if kw.get("inputs_embeds") is not None else None,
        with_kwargs=True)
    try:
        for budget in (100, 7):
            llava_freepruner.apply(plugin_config("oracle", 1.0, "cpu", None, 0).replace(ratio=None, tokens=budget))
            backends.set_vision_method(oracle.FirstK())
            assert not oracle.FirstK().attention_layers(4, 2)
            with torch.inference_mode():
                bench.model.generate(**inputs.generate_kwargs, max_new_tokens=1, do_sample=False, pad_token_id=0)
            assert seen[-1] == (2, inputs.text_tokens + budget, bench.model.config.hidden_size)
            llava_freepruner.remove()
    finally:
        handle.remove()
        llava_freepruner.remove()


# --- FLOPs against hand computations --------------------------------------------------------


def test_decoder_flops_match_a_hand_computation():
    shape = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=2, vocab=10)
    # per layer at 5 tokens: q,k,v,o 2*5*8*32 = 2560; QK^T + AV 4*25*8 = 800; MLP 6*5*8*16 = 3840
    assert flops.decoder_layer_flops(shape, 5) == 7200
    # two layers (the first dropped 2 tokens), then the LM head over 3 positions: 2*3*8*10 = 480
    assert flops.llm_prefill_flops(shape, [5, 3], 3) == 7200 + (2 * 3 * 8 * 32 + 4 * 9 * 8 + 6 * 3 * 8 * 16) + 480
    assert flops.llm_prefill_flops(shape, [5, 3], 5) - flops.llm_prefill_flops(shape, [5, 3], 3) == 2 * 2 * 8 * 10
    grouped = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)
    assert flops.decoder_layer_flops(grouped, 5) == 7200 - 2 * 5 * 8 * 8     # k, v are 4 wide, not 8


def test_decoder_flops_equal_twice_the_weights_plus_attention_on_a_real_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    config = LlamaConfig(hidden_size=64, intermediate_size=176, num_attention_heads=8, num_key_value_heads=2, vocab_size=50)
    weights = sum(m.weight.numel() for m in LlamaDecoderLayer(config, 0).modules() if isinstance(m, torch.nn.Linear))
    n = 37
    assert flops.decoder_layer_flops(flops.DecoderShape.from_config(config), n) == 2 * n * weights + 4 * n * n * 64


def test_vision_and_projector_flops_match_a_hand_computation():
    shape = flops.EncoderShape(hidden=4, intermediate=8, layers=2, patch=2)
    # 4 patches + CLS = 5 tokens; embed 2*4*(3*2*2)*4 = 384;
    # layer: q,k,v,o 2*5*4*16 = 640, attention 4*25*4 = 400, MLP 4*5*4*8 = 640
    assert flops.vision_flops(shape, 4) == 384 + 2 * 1680
    assert flops.vision_flops(shape, 4, crops=3) == 3 * (384 + 2 * 1680)
    assert flops.projector_flops([(4, 6), (6, 6)], 10) == 2 * 10 * (24 + 36)
    with pytest.raises(ValueError, match="layer_tokens"):
        flops.llm_prefill_flops(flops.DecoderShape(8, 16, 2, 2, 10), [], 0)


# --- architectures and bad inputs ---------------------------------------------------------------


def test_published_architectures_have_the_real_sizes():
    llm, vision = archs.architecture("llava-v1.5-7b")
    assert (llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]) == (4096, 11008, 32)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["image_size"], vision["patch_size"]) == (1024, 24, 336, 14)
    llm, _ = archs.architecture("llava-v1.5-13b")
    assert (llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]) == (5120, 13824, 40)
    llm, _ = archs.architecture("llava-v1.6-7b", llm_layers=2, vision_layers=6)
    assert llm["image_aspect_ratio"] == "anyres" and llm["num_hidden_layers"] == 2
    assert archs.ARCHITECTURES["llava-v1.6-7b"]["num_hidden_layers"] == 32     # data left untouched


@pytest.mark.parametrize("call, message", [
    (lambda: archs.architecture("llava-v9"), "--random-weights 'llava-v9'"),
    (lambda: archs.architecture("llava-v1.5-7b", llm_layers=33), "--llm-layers=33"),
    (lambda: archs.architecture("llava-v1.5-7b", vision_layers=1), "--vision-layers=1 is too shallow"),
    (lambda: Settings(["freepruner", "magic"], [0.5]), "unknown method 'magic'"),
    (lambda: Settings(["grid"], [0.0]), "--ratios: 0.0"),
    (lambda: Settings(["grid"], [0.5], new_tokens=1), "--new-tokens 1"),
])
def test_bad_inputs_name_the_option_and_the_value(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


def test_random_weight_build_uses_upstream_classes_without_files(monkeypatch, tmp_path):
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from llava_freepruner.bench import model as bench_model

    small = dict(archs.ARCHITECTURES["llava-v1.5-7b"], hidden_size=32, intermediate_size=64,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=100, mm_hidden_size=32)
    monkeypatch.setitem(archs.ARCHITECTURES, "llava-small", small)
    monkeypatch.setattr(archs, "CLIP_VIT_L_14_336", dict(archs.CLIP_VIT_L_14_336, hidden_size=32,
                                                         intermediate_size=64, num_attention_heads=4))
    monkeypatch.chdir(tmp_path)
    bench = bench_model.build_random("llava-small", 2, 3, "cpu", torch.float32)
    assert isinstance(bench.model, LlavaLlamaForCausalLM)
    tower = bench.model.get_vision_tower()
    assert tower.is_loaded and tower.num_patches == 576 and tower.config.num_hidden_layers == 3
    assert bench.model.config.mm_vision_tower == "openai/clip-vit-large-patch14-336"
    assert list(tmp_path.iterdir()) == []
    inputs = bench_model.make_inputs(bench, 1, 20)
    assert inputs.text_tokens == 20 and int((inputs.input_ids == -200).sum()) == 1 and inputs.crops == 1
    with torch.inference_mode():
        out = bench.model.generate(**inputs.generate_kwargs, max_new_tokens=2, min_new_tokens=2, do_sample=False,
                                   pad_token_id=0)
    assert out.shape[0] == 1 and out.shape[1] >= 2


def test_cli_rejects_bad_device_and_layer_flags(checkpoint, capsys):
    assert main(["bench", "--model", checkpoint, "--device", "tpu"]) == 2
    assert "--device 'tpu'" in capsys.readouterr().err
    assert main(["bench", "--model", checkpoint, "--llm-layers", "2", "--device", "cpu"]) == 2
    assert "--random-weights only" in capsys.readouterr().err


@pytest.mark.parametrize("backend, message", [
    ("tensorflow", "--backend 'tensorflow' is not valid: expected one of upstream, transformers"),
    # upstream llava pins transformers 4.37.2, which transformers' LLaVA classes do not support
    ("transformers", "--backend transformers: transformers 4.37.2 is installed"),
])
def test_cli_refuses_a_backend_this_environment_cannot_run(backend, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--backend", backend, "--random-weights", "llava-1.5-7b-hf", "--device", "cpu",
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_upstream_and_transformers_names_are_told_apart():
    with pytest.raises(ValueError, match="that is a transformers name"):
        archs.architecture("llava-1.5-7b-hf")
    with pytest.raises(ValueError, match="that is an upstream llava name"):
        archs.hf_architecture("llava-v1.5-7b")
    decoder, llava, vision = archs.hf_architecture("llava-v1.6-vicuna-7b-hf", llm_layers=2)
    upstream, _ = archs.architecture("llava-v1.6-7b", llm_layers=2)
    assert decoder["vocab_size"] == 32064 and decoder["num_hidden_layers"] == 2
    assert all(decoder[k] == upstream[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads"))
    assert llava["image_grid_pinpoints"] == upstream["image_grid_pinpoints"] and "mm_projector_type" not in decoder
