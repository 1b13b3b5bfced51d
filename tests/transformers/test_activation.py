"""The import hook in a process where only transformers (no upstream llava) is installed."""

import json
import os
import site
import subprocess
import sys
import textwrap

import pytest

from llava_freepruner.runtime.backends.transformers_llava import check_version
from llava_freepruner.config import ConfigError

CALLER = textwrap.dedent("""
    import sys, torch
    import skimage.data
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    folder, answer_file = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.fromarray(skimage.data.coffee()), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    answer = processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:])[0]
    with open(answer_file, "w") as handle:
        handle.write(f"{inputs['input_ids'].shape[1]} {out.past_key_values.get_seq_length()} {answer!r}")
""")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from llava_freepruner.fixtures import hf_tiny

    return hf_tiny.save(hf_tiny.TinyHF(), str(tmp_path_factory.mktemp("tiny-llava-hf")))


QWEN_CALLER = textwrap.dedent("""
    import sys, torch
    import skimage.data
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from llava_freepruner.fixtures.hf_tiny_qwen import load_processor
    folder, answer_file = sys.argv[1], sys.argv[2]
    processor = load_processor(folder)         # AutoProcessor, where torchvision gives it its video half
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.fromarray(skimage.data.coffee()), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    with open(answer_file, "w") as handle:
        handle.write(f"{inputs['input_ids'].shape[1]} {out.past_key_values.get_seq_length()}")
""")


def run_caller(tmp_path, checkpoint, caller=CALLER, **env_vars):
    if not any(os.path.exists(os.path.join(d, "llava_freepruner_autoload.pth")) for d in site.getsitepackages()):
        pytest.skip("the plugin is not installed in this environment (its .pth hook is missing)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env_vars)
    answers = tmp_path / "answer.txt"
    script = tmp_path / "caller.py"
    script.write_text(caller)
    result = subprocess.run([sys.executable, str(script), checkpoint, str(answers)], env=env,
                            capture_output=True, text=True, timeout=300)
    return result, answers


def test_a_variable_alone_prunes_unchanged_caller_code(tmp_path, checkpoint):
    stats = tmp_path / "stats.jsonl"
    result, answers = run_caller(tmp_path, checkpoint, FREEPRUNER_RATIO="0.5", FREEPRUNER_STATS=str(stats))
    assert result.returncode == 0, result.stderr
    assert "freePruner: freepruner keeping 288 of 576 visual tokens per image." in result.stderr
    prompt, cached, _ = answers.read_text().split(" ", 2)
    assert int(cached) == int(prompt) - 288 + 2
    record = json.loads(stats.read_text().splitlines()[0])
    assert (record["tokens_in"], record["tokens_out"]) == (576, 288)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_a_variable_alone_prunes_a_qwen_model(kind, tmp_path):
    from llava_freepruner.fixtures import hf_tiny_qwen

    if not hf_tiny_qwen.available(kind):
        pytest.skip(f"{kind} needs transformers >= 5.2")
    folder = hf_tiny_qwen.save(hf_tiny_qwen.TinyQwen(kind=kind), str(tmp_path / kind))
    stats = tmp_path / "stats.jsonl"
    result, answers = run_caller(tmp_path, folder, caller=QWEN_CALLER, FREEPRUNER_RATIO="0.5",
                                 FREEPRUNER_STATS=str(stats))
    assert result.returncode == 0, result.stderr
    record = json.loads(stats.read_text().splitlines()[0])
    made, kept = record["tokens_in"], record["tokens_out"]
    assert kept == (made + 1) // 2
    assert f"(the first: {kept} of {made})" in result.stderr
    prompt, cached = map(int, answers.read_text().split())
    assert cached == prompt - (made - kept) + 2


def test_no_variable_leaves_the_plugin_unimported(tmp_path, checkpoint):
    result, answers = run_caller(tmp_path, checkpoint)
    assert result.returncode == 0, result.stderr
    prompt, cached, _ = answers.read_text().split(" ", 2)
    assert int(cached) == int(prompt) + 2
    assert "freePruner" not in result.stderr


def test_a_bad_value_stops_before_any_answer_is_written(tmp_path, checkpoint):
    result, answers = run_caller(tmp_path, checkpoint, FREEPRUNER_RATIO="2")
    assert result.returncode != 0
    assert "FREEPRUNER_RATIO='2'" in result.stderr or "FREEPRUNER_RATIO=2" in result.stderr
    assert "0 < r <= 1" in result.stderr
    assert not answers.exists()


@pytest.mark.parametrize("version", ["4.57.6", "5.17.0", "5.24.0", "5.30.1"])
def test_supported_versions_pass(version):
    check_version(version)


@pytest.mark.parametrize("version", ["4.37.2", "4.56.2", "5.16.1", "6.0.0"])
def test_unsupported_versions_are_refused_naming_both(version):
    with pytest.raises(ConfigError) as err:
        check_version(version)
    assert f"transformers {version} is installed" in str(err.value)
    assert "4.57.x, or 5.17 and newer 5.x" in str(err.value)
