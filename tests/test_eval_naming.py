import pytest

from llava_freepruner.tools.evaluation.naming import model_name_from_path, pruning_tag, run_name


def test_no_plugin_variable_is_none():
    assert pruning_tag({"PATH": "/bin", "HOME": "/root"}) == "none"


def test_output_only_variables_do_not_change_the_tag():
    assert pruning_tag({"FREEPRUNER_STATS": "/tmp/s.jsonl", "FREEPRUNER_DEVICE": "cpu"}) == "none"
    assert pruning_tag({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_STATS": "/a"}) == "freepruner-r0.5"


def test_ratio_tokens_and_method():
    assert pruning_tag({"FREEPRUNER_RATIO": "0.5"}) == "freepruner-r0.5"
    assert pruning_tag({"FREEPRUNER_TOKENS": "64", "FREEPRUNER_METHOD": "Random"}) == "random-t64"
    assert pruning_tag({"FREEPRUNER_METHOD": "freepruner+fitprune", "FREEPRUNER_RATIO": "0.25"}) == \
        "freepruner+fitprune-r0.25"


def test_disabled_or_method_none_is_none():
    assert pruning_tag({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_DISABLE": "1"}) == "none"
    assert pruning_tag({"FREEPRUNER_METHOD": "none"}) == "none"
    assert pruning_tag({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_DISABLE": "0"}) == "freepruner-r0.5"


def test_bad_disable_value_is_named():
    with pytest.raises(ValueError, match="FREEPRUNER_DISABLE='maybe'"):
        pruning_tag({"FREEPRUNER_DISABLE": "maybe"})


def test_other_knobs_give_distinct_stable_tags():
    a = pruning_tag({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_LAYERS": "12-21"})
    b = pruning_tag({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_LAYERS": "6-8"})
    assert a.startswith("freepruner-r0.5-k") and b.startswith("freepruner-r0.5-k")
    assert a != b
    assert a == pruning_tag({"FREEPRUNER_LAYERS": "12-21", "FREEPRUNER_RATIO": "0.5"})


def test_unsafe_characters_are_replaced():
    tag = pruning_tag({"FREEPRUNER_RATIO": "0.5/../x y"})
    assert "/" not in tag and " " not in tag


def test_model_name_and_run_name():
    assert model_name_from_path("liuhaotian/llava-v1.5-13b") == "llava-v1.5-13b"
    assert model_name_from_path("/ckpt/llava-lora/checkpoint-500/") == "llava-lora_checkpoint-500"
    assert run_name("/m/llava-v1.5-7b", {"FREEPRUNER_RATIO": "0.25"}) == "llava-v1.5-7b__freepruner-r0.25"
    assert run_name("/m/llava-v1.5-7b", {}) != run_name("/m/llava-v1.5-7b", {"FREEPRUNER_RATIO": "0.25"})
