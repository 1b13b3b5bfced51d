"""The bench on transformers' LLaVA classes: random weights of a published shape at
narrow widths, through the CLI, next to the oracle."""

import json

import pytest

from llava_freepruner.tools.bench import archs
from llava_freepruner.tools.cli import main

RATIOS = (1.0, 0.5)
METHODS = ("freepruner", "random")


@pytest.fixture
def narrow(monkeypatch):
    """llava-1.5 / llava-1.6 layouts (336 px, 576 patches per crop) at widths a CPU runs in
    milliseconds, named like transformers' conversions."""
    width = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4)
    for upstream, hf in (("llava-v1.5-7b", "narrow-llava-1.5-hf"), ("llava-v1.6-7b", "narrow-llava-1.6-hf")):
        monkeypatch.setitem(archs.ARCHITECTURES, upstream + "-narrow",
                            dict(archs.ARCHITECTURES[upstream], mm_hidden_size=32, **width))
        monkeypatch.setitem(archs.HF_CHECKPOINTS, hf, upstream + "-narrow")
    monkeypatch.setattr(archs, "CLIP_VIT_L_14_336", dict(archs.CLIP_VIT_L_14_336, hidden_size=32,
                                                         intermediate_size=64, num_attention_heads=4))


def bench(out, name, methods=METHODS, llm_layers=1, ratios=RATIOS, batch="1", repeats=1):
    code = main(["bench", "--backend", "transformers", "--random-weights", name, "--llm-layers", str(llm_layers),
                 "--vision-layers", "2", "--methods", ",".join(methods), "--ratios", ",".join(map(str, ratios)),
                 "--repeats", str(repeats), "--warmup", "0", "--new-tokens", "2", "--text-tokens", "12",
                 "--batch-size", batch, "--device", "cpu", "--out", str(out)])
    assert code == 0
    with open(out / "results.json") as handle:
        return json.load(handle)


def by_key(records):
    return {(r["method"], r["ratio"]): r for r in records}


def test_llava_rows_keep_the_budget_next_to_the_oracle(narrow, tmp_path):
    data = bench(tmp_path, "narrow-llava-1.5-hf")
    rows = by_key(data["records"])
    assert sorted(rows) == sorted((m, r) for m in ("oracle",) + METHODS for r in RATIOS)
    for (method, ratio), r in rows.items():
        assert r["visual_tokens"] == (576 if ratio == 1.0 else 288), (method, ratio)
        assert r["layer_tokens"] == [12 + r["visual_tokens"]]
        assert r["efficiency"] == pytest.approx(rows[("oracle", ratio)]["ttft_ms"] / r["ttft_ms"], rel=1e-3)
        assert r["ttft_ms"] > r["llm_prefill_ms"] > 0 and r["vision_ms"] > 0
    assert rows[("oracle", 0.5)]["efficiency"] == 1.0
    assert rows[("oracle", 0.5)]["llm_prefill_flops"] < rows[("oracle", 1.0)]["llm_prefill_flops"]
    meta = data["meta"]
    assert (meta["backend"], meta["llm_layers"], meta["vision_layers"]) == ("transformers", 1, 2)
    assert "transformers backend" in (tmp_path / "results.md").read_text()


def test_a_batch_size_list_times_rows_per_batch_size(narrow, tmp_path):
    data = bench(tmp_path, "narrow-llava-1.5-hf", methods=("freepruner",), ratios=(0.5,), batch="1,2", repeats=2)
    rows = {(r["method"], r["batch_size"]): r for r in data["records"]}
    assert sorted(rows) == [("freepruner", 1), ("freepruner", 2), ("oracle", 1), ("oracle", 2)]
    assert data["meta"]["batch_sizes"] == [1, 2]
    for (method, batch), r in rows.items():
        assert r["visual_tokens"] == 288 and r["repeats"] == 2
        # the LLM's FLOPs scale with the batch; each row is compared with the oracle of its batch size
        assert r["llm_prefill_flops"] == batch * rows[(method, 1)]["llm_prefill_flops"]
        assert r["efficiency"] == pytest.approx(rows[("oracle", batch)]["ttft_ms"] / r["ttft_ms"], rel=1e-3)
        for key in ("vision_ms", "selection_ms", "llm_prefill_ms", "ttft_ms"):
            assert r["spread"][key]["q1"] <= r[key] <= r["spread"][key]["q3"]
    assert "| freepruner | 0.5 | 2 | 288 |" in (tmp_path / "results.md").read_text()


def test_llava_next_rows_count_the_packed_tiles(narrow, tmp_path):
    rows = by_key(bench(tmp_path, "narrow-llava-1.6-hf", methods=("freepruner",))["records"])
    full = rows[("oracle", 1.0)]["visual_tokens"]
    # base crop + unpadded tiles + one newline per row: several crops' worth of tokens
    assert full > 3 * 576
    assert rows[("freepruner", 1.0)]["visual_tokens"] == full
    # half of every crop's patches; a map row's newline stays while the row keeps a token
    for method in ("oracle", "freepruner"):
        assert 0.45 * full < rows[(method, 0.5)]["visual_tokens"] < 0.55 * full


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorflow", "--random-weights", "llava-1.5-7b-hf"],
     "--backend 'tensorflow' is not valid: expected one of upstream, transformers"),
    (["--backend", "upstream", "--random-weights", "llava-v1.5-7b"], "--backend upstream needs upstream llava"),
    (["--backend", "transformers", "--random-weights", "llava-v1.5-7b"],
     "not a known transformers architecture: expected one of llava-1.5-7b-hf"),
])
def test_cli_refuses_what_this_environment_cannot_run_before_writing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", *args, "--device", "cpu", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_llm_side_rows_prune_inside_the_transformers_decoder(method, narrow, tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "--backend", "transformers", "--random-weights", "narrow-llava-1.5-hf", "--llm-layers", "4",
                 "--vision-layers", "2", "--methods", method, "--ratios", "0.5", "--repeats", "1", "--warmup", "0",
                 "--new-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    row = by_key(json.loads((out / "results.json").read_text())["records"])[(method, 0.5)]
    text = row["layer_tokens"][0] - 576
    assert row["layer_tokens"] == [text + 576] * 3 + [text + 288]     # layers 0-2 see all, layer 3 the kept half


def test_a_checkpoint_runs_with_its_own_processor_and_prompt(tmp_path):
    from llava_freepruner.fixtures import hf_tiny

    folder = hf_tiny.save(hf_tiny.TinyHF(llm_layers=1, vision_layers=2), str(tmp_path / "tiny-llava-hf"))
    out = tmp_path / "out"
    assert main(["bench", "--backend", "transformers", "--model", folder, "--methods", "grid", "--ratios", "1.0,0.5",
                 "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = by_key(data["records"])
    assert {ratio: rows[("grid", ratio)]["visual_tokens"] for ratio in RATIOS} == {1.0: 576, 0.5: 288}
    # the processor expanded "<image>" in the fixed question: its text is what the decoder sees besides the image
    text = data["meta"]["text_tokens"]
    assert 10 < text < 200 and rows[("oracle", 1.0)]["layer_tokens"] == [text + 576]
    assert data["meta"]["weights"] == "checkpoint"


def test_count_ops_splits_the_plugin_work_by_phase(tmp_path, capsys):
    """bench --count-ops on transformers' classes: the unpatched model costs no plugin op, a
    vision method works in the tower and after it, an LLM method in the prefill."""
    from llava_freepruner.tools.bench.count import PHASES

    code = main(["bench", "--backend", "transformers", "--random-weights", "tiny-llava-1.5-hf", "--llm-layers", "3",
                 "--vision-layers", "2", "--count-ops", "--methods", "none,freepruner,fastv", "--ratios", "1.0,0.5",
                 "--batch-size", "1,2", "--new-tokens", "3", "--text-tokens", "12", "--device", "cpu",
                 "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "op_counts.json").read_text())
    assert data["meta"]["backend"] == "transformers" and data["meta"]["dtype"] == "float16"
    rows = {(r["method"], r["ratio"], r["batch_size"]): r for r in data["records"]}
    assert sorted(rows) == sorted([(m, r, b) for b in (1, 2) for r in (1.0, 0.5) for m in ("freepruner", "fastv")]
                                  + [("none", 1.0, 1), ("none", 1.0, 2)])
    for (method, ratio, batch), r in rows.items():
        assert r["decode_steps"] == 2
        for phase in PHASES:
            assert r[f"{phase}_host_ops"] > 0 or phase == "setup", (method, phase)
            if method == "none":
                assert r[f"{phase}_plugin_ops"] == r[f"{phase}_plugin_syncs"] == 0, (batch, phase)
    for batch in (1, 2):
        vision, llm = rows[("freepruner", 0.5, batch)], rows[("fastv", 0.5, batch)]
        assert vision["tower_plugin_ops"] + vision["between_plugin_ops"] > 0
        assert llm["tower_plugin_ops"] == 0 and llm["prefill_plugin_ops"] > 0


# --- Qwen-VL rows ------------------------------------------------------------------------------

# Parameters of the published checkpoints (their safetensors metadata on the hub)
QWEN_PARAMETERS = {"qwen2.5-vl-7b": 8_292_166_656, "qwen2-vl-7b": 8_291_375_616, "qwen3-vl-8b": 8_767_123_696}


@pytest.mark.parametrize("name", sorted(QWEN_PARAMETERS))
def test_qwen_geometries_have_the_published_checkpoints_parameters(name):
    import torch
    import transformers

    from llava_freepruner.tools.bench import hf_qwen

    kind, vision, text = archs.qwen_architecture(name)
    config_name, model_name = hf_qwen._CLASSES[kind]
    config = getattr(transformers, config_name)(vision_config=vision, text_config=hf_qwen._rope(kind, text),
                                                tie_word_embeddings=False, **archs.QWEN_TOKEN_IDS)
    with torch.device("meta"):
        model = getattr(transformers, model_name)(config)
    assert sum(p.numel() for p in model.parameters()) == QWEN_PARAMETERS[name]


def test_a_shallower_qwen_tower_keeps_its_full_attention_and_deepstack_blocks():
    assert archs.qwen_architecture("qwen2.5-vl-7b")[1]["fullatt_block_indexes"] == [7, 15, 23, 31]
    assert archs.qwen_architecture("qwen2.5-vl-7b", 2, 16)[1]["fullatt_block_indexes"] == [7, 15]
    _, vision, text = archs.qwen_architecture("qwen2.5-vl-7b", 2, 4)
    assert (vision["depth"], vision["fullatt_block_indexes"], text["num_hidden_layers"]) == (4, [3], 2)
    assert archs.qwen_architecture("qwen3-vl-8b", None, 4)[1]["deepstack_visual_indexes"] == [1, 2, 3]
    with pytest.raises(ValueError, match="--vision-layers=33 is not valid for qwen2-vl-7b: expected 1..32"):
        archs.qwen_architecture("qwen2-vl-7b", None, 33)


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_qwen_rows_keep_half_of_the_pictures_merged_tokens(name, tmp_path):
    data = bench(tmp_path, name)
    rows = by_key(data["records"])
    assert sorted(rows) == sorted((m, r) for m in ("oracle",) + METHODS for r in RATIOS)
    text = data["meta"]["text_tokens"]
    assert text == 14          # 12 random ids, <|vision_start|> and <|vision_end|>
    for (method, ratio), r in rows.items():
        # 448 px (512 px for Qwen3-VL's 16 px patches): 32 x 32 patches, 16 x 16 merged tokens
        assert (r["budget"], r["visual_tokens"]) == ((256, 256) if ratio == 1.0 else (128, 128)), (method, ratio)
        assert r["layer_tokens"] == [text + r["visual_tokens"]]
        assert r["ttft_ms"] > r["llm_prefill_ms"] > 0 and r["vision_ms"] > 0
    # the tower and its merger see every patch at any ratio; the LLM sees half the picture
    full, half = rows[("oracle", 1.0)], rows[("oracle", 0.5)]
    assert half["vision_flops"] == full["vision_flops"] and half["projector_flops"] == full["projector_flops"] > 0
    assert half["llm_prefill_flops"] < full["llm_prefill_flops"]
    assert (data["meta"]["llm_layers"], data["meta"]["vision_layers"]) == (1, 2)


def test_count_ops_on_qwen_rows(tmp_path):
    from llava_freepruner.tools.bench.count import PHASES

    code = main(["bench", "--backend", "transformers", "--random-weights", "tiny-qwen2.5-vl", "--llm-layers", "2",
                 "--vision-layers", "4", "--count-ops", "--methods", "none,freepruner", "--ratios", "1.0,0.5",
                 "--batch-size", "1,2", "--new-tokens", "3", "--text-tokens", "12", "--device", "cpu",
                 "--out", str(tmp_path)])
    assert code == 0
    rows = {(r["method"], r["ratio"], r["batch_size"]): r
            for r in json.loads((tmp_path / "op_counts.json").read_text())["records"]}
    assert sorted(rows) == sorted((m, r, b) for b in (1, 2) for m, r in
                                  (("none", 1.0), ("freepruner", 1.0), ("freepruner", 0.5)))
    for (method, ratio, batch), r in rows.items():
        assert r["decode_steps"] == 2 and r["tower_host_ops"] > 0 and r["prefill_host_ops"] > 0
        if method == "none":
            assert all(r[f"{p}_plugin_ops"] == r[f"{p}_plugin_syncs"] == 0 for p in PHASES), batch
    for batch in (1, 2):
        pruned = rows[("freepruner", 0.5, batch)]
        assert pruned["tower_plugin_ops"] > 0 and pruned["between_plugin_ops"] > 0
        assert pruned["decode_plugin_syncs"] == 0
