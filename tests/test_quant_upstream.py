"""FREEPRUNER_QUANT with upstream llava: refused where it cannot be served, loader flags where it can,
and quantized weights (as upstream's loader makes them) pruned by every method."""

import json

import pytest
import torch

from conftest import run_upstream
from llava_freepruner.runtime import quantization
from llava_freepruner.config import Config, ConfigError, from_env


@pytest.mark.parametrize("env, message", [
    ({"FREEPRUNER_QUANT": "4bit"}, "FREEPRUNER_QUANT=4bit cannot be served: torch sees no CUDA device"),
    ({"FREEPRUNER_QUANT": "3bit"}, "FREEPRUNER_QUANT='3bit' is not valid: expected one of 4bit, 8bit or none"),
])
def test_quant_the_machine_cannot_serve_stops_the_entry_point_before_loading(env, message, checkpoints, question_file,
                                                                             photo_dir, tmp_path):
    if torch.cuda.is_available() and env["FREEPRUNER_QUANT"] != "3bit":
        pytest.skip("this machine has CUDA: the loader would quantize")
    answers = tmp_path / "answers.jsonl"
    result = run_upstream("llava.eval.model_vqa_loader",
                          ["--model-path", checkpoints(), "--question-file", question_file, "--image-folder",
                           photo_dir, "--answers-file", answers], {"FREEPRUNER_RATIO": "0.5", **env}, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Loading checkpoint" not in result.stderr and not answers.exists()


def test_quant_variable_parses_and_none_means_unquantized():
    assert from_env({"FREEPRUNER_QUANT": " 4BIT "}).quant == "4bit"
    assert from_env({"FREEPRUNER_QUANT": "none"}).quant is None
    assert quantization.loader_flags(Config(quant="8bit")) == {"load_4bit": False, "load_8bit": True}


def test_quant_with_cpu_device_is_refused_even_with_cuda():
    with pytest.raises(ConfigError, match="FREEPRUNER_QUANT=8bit cannot be served: FREEPRUNER_DEVICE=cpu is set"):
        quantization.check_upstream(Config(quant="8bit", device="cpu"), cuda_available=True)


def test_missing_bitsandbytes_is_named(monkeypatch):
    real = quantization.importlib.util.find_spec
    monkeypatch.setattr(quantization.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match="FREEPRUNER_QUANT=4bit needs bitsandbytes, which is not installed"):
        quantization.check_upstream(Config(quant="4bit"), cuda_available=True)


def test_loader_is_asked_to_quantize_and_its_model_checked(unpatched):
    """The wrapped loader with a stand-in for upstream's (which needs CUDA to quantize)."""
    from llava_freepruner.runtime.backends import upstream_loader

    calls = []

    def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False,
                              device_map="auto", device="cuda", **kwargs):
        calls.append(dict(load_8bit=load_8bit, load_4bit=load_4bit, device=device))
        model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        if load_4bit or load_8bit:
            quantization.quantize_in_place(model, "4bit" if load_4bit else "8bit")
        return None, model, None, 2048

    upstream_loader._config = Config(quant="4bit")
    try:
        loader = upstream_loader._wrap(load_pretrained_model)
        loader("ckpt", None, "llava-x", load_8bit=True)
        assert calls == [dict(load_8bit=False, load_4bit=True, device="cuda")]
        upstream_loader._config = Config(quant="8bit")
        with pytest.raises(RuntimeError, match="without quantized layers; refusing to run it unquantized"):
            upstream_loader._wrap(lambda *a, **k: load_pretrained_model(*a, **{**k, "load_8bit": False}))("c", None, "n")
    finally:
        upstream_loader._config = None


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_every_method_prunes_quantized_weights(quant, tmp_path):
    """bench quantizes a random-weights tiny LLaVA-1.5 in place as upstream's loader does
    (language model and projector) and refuses a row whose LLM-side method deleted nothing."""
    pytest.importorskip("bitsandbytes")
    from llava_freepruner.tools.cli import main

    code = main(["bench", "--random-weights", "tiny-llava-v1.5", "--quant", quant, "--methods",
                 "freepruner,fastv,fitprune", "--ratios", "0.5", "--repeats", "1", "--warmup", "0",
                 "--new-tokens", "2", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    by_method = {r["method"]: r for r in records}
    assert set(by_method) == {"oracle", "freepruner", "fastv", "fitprune"}
    assert all(r["quant"] == quant and r["quantized_parts"] == ["layers", "mm_projector"] for r in records)
    assert by_method["freepruner"]["visual_tokens"] == 288
    for method in ("fastv", "fitprune"):
        layers = by_method[method]["layer_tokens"]
        assert layers[-1] < layers[0], method
