import pytest

from llava_freepruner.config import Config, ConfigError, describe, from_env, is_requested


def test_defaults_and_ratio():
    config = from_env({"FREEPRUNER_RATIO": "0.5"})
    assert config.ratio == 0.5 and config.vision_method == "freepruner" and config.llm_method is None
    assert config.budget(576) == 288
    assert describe(config, 576) == "freePruner: freepruner keeping 288 of 576 visual tokens per image."


def test_environment_without_our_variables_is_default():
    assert from_env({"PATH": "/bin", "FREE": "1"}) == Config()
    assert not is_requested({"PATH": "/bin"}) and is_requested({"FITPRUNE_RECIPE": "x"})


@pytest.mark.parametrize("ratio, n, kept", [(1.0, 576, 576), (0.001, 576, 1), (0.5, 575, 288), (0.25, 2, 1), (0.75, 2, 2)])
def test_budget_rounds_half_up_and_keeps_at_least_one(ratio, n, kept):
    assert Config(ratio=ratio).budget(n) == kept


def test_tokens_is_absolute_and_capped():
    config = from_env({"FREEPRUNER_TOKENS": "64"})
    assert config.budget(576) == 64 and config.budget(10) == 10


def test_all_knobs_parse():
    config = from_env({
        "FREEPRUNER_METHOD": "freepruner+fitprune", "FITPRUNE_RECIPE": "llava-v1.5-7b@60",
        "FREEPRUNER_LAYERS": "3-5,8", "FREEPRUNER_IQR": "2", "FREEPRUNER_PIVOT_CAP": "0.25",
        "FREEPRUNER_DIRECTION": "both", "FREEPRUNER_RADIUS": "1", "FREEPRUNER_SEED": "7",
        "FREEPRUNER_STATS": "/tmp/s.jsonl", "FREEPRUNER_DEVICE": "CPU", "FREEPRUNER_DISABLE": "0",
    })
    assert (config.vision_method, config.llm_method) == ("freepruner", "fitprune")
    assert config.layers == (3, 4, 5, 8) and config.iqr == 2 and config.pivot_cap == 0.25
    assert (config.direction, config.radius, config.seed, config.device) == ("both", 1, 7, "cpu")
    assert config.enabled and config.method == "freepruner+fitprune"
    assert not from_env({"FREEPRUNER_DISABLE": "yes"}).enabled
    assert from_env({"FREEPRUNER_METHOD": "none"}).method == "none"


@pytest.mark.parametrize("env, names", [
    ({"FREEPRUNER_RATIO": "abc"}, ["FREEPRUNER_RATIO", "'abc'", "0 < r <= 1"]),
    ({"FREEPRUNER_RATIO": "0"}, ["FREEPRUNER_RATIO", "0 < r <= 1"]),
    ({"FREEPRUNER_RATIO": "1.5"}, ["FREEPRUNER_RATIO", "1.5"]),
    ({"FREEPRUNER_RATIO": "nan"}, ["FREEPRUNER_RATIO", "nan"]),
    ({"FREEPRUNER_TOKENS": "0"}, ["FREEPRUNER_TOKENS", ">= 1"]),
    ({"FREEPRUNER_TOKENS": "2.5"}, ["FREEPRUNER_TOKENS", "'2.5'"]),
    ({"FREEPRUNER_RATIO": "0.5", "FREEPRUNER_TOKENS": "100"}, ["FREEPRUNER_RATIO", "FREEPRUNER_TOKENS", "only one"]),
    ({"FREEPRUNER_METHOD": "prumerge"}, ["FREEPRUNER_METHOD", "'prumerge'", "freepruner", "fitprune"]),
    ({"FREEPRUNER_METHOD": "freepruner+random"}, ["FREEPRUNER_METHOD"]),
    ({"FREEPRUNER_METHOD": "fitprune"}, ["FITPRUNE_RECIPE", "llava-v1.5-7b@60"]),
    ({"FREEPRUNER_LAYERS": "5-3"}, ["FREEPRUNER_LAYERS", "'5-3'", "12-21"]),
    ({"FREEPRUNER_LAYERS": "a"}, ["FREEPRUNER_LAYERS"]),
    ({"FREEPRUNER_DIRECTION": "up"}, ["FREEPRUNER_DIRECTION", "from_pivots, to_pivots, both"]),
    ({"FREEPRUNER_PIVOT_CAP": "0"}, ["FREEPRUNER_PIVOT_CAP"]),
    ({"FREEPRUNER_RADIUS": "-1"}, ["FREEPRUNER_RADIUS", ">= 0"]),
    ({"FREEPRUNER_DEVICE": "tpu"}, ["FREEPRUNER_DEVICE", "cuda, cpu"]),
    ({"FREEPRUNER_DISABLE": "maybe"}, ["FREEPRUNER_DISABLE", "'maybe'"]),
    ({"FREEPRUNER_RATIOO": "0.5"}, ["FREEPRUNER_RATIOO", "Did you mean FREEPRUNER_RATIO?"]),
    ({"FITPRUNE_RECIPIE": "x"}, ["FITPRUNE_RECIPIE", "FITPRUNE_RECIPE"]),
])
def test_bad_values_name_variable_value_and_accepted(env, names):
    with pytest.raises(ConfigError) as err:
        from_env(env)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("fields, names", [
    ({"ratio": "0.5"}, ["FREEPRUNER_RATIO='0.5'", "Config.ratio, str", "0 < r <= 1"]),
    ({"ratio": True}, ["FREEPRUNER_RATIO=True", "Config.ratio, bool"]),
    ({"ratio": float("nan")}, ["FREEPRUNER_RATIO=nan", "0 < r <= 1"]),
    ({"tokens": 2.5}, ["FREEPRUNER_TOKENS=2.5", "Config.tokens, float", "a whole number of visual tokens"]),
    ({"tokens": True}, ["FREEPRUNER_TOKENS=True", "Config.tokens, bool", "a whole number"]),
    ({"iqr": None}, ["FREEPRUNER_IQR=None", "a multiplier >= 0"]),
    ({"fastv_layer": "2"}, ["FREEPRUNER_FASTV_LAYER='2'", "an LLM layer index >= 0"]),
    ({"video": "temporal", "video_tau": "0.9"}, ["FREEPRUNER_VIDEO_TAU='0.9'", "0 < tau <= 1"]),
])
def test_config_fields_of_the_wrong_type_are_refused_by_name(fields, names):
    with pytest.raises(ConfigError) as err:
        Config(**fields)
    for name in names:
        assert name in str(err.value)


def test_numbers_of_other_types_are_accepted():
    import numpy as np

    assert Config(ratio=1).budget(576) == 576 and Config(ratio=np.float32(0.5)).budget(576) == 288
    assert Config(tokens=np.int64(64)).budget(576) == 64


@pytest.mark.parametrize("variable, value, kept", [("FREEPRUNER_RATIO", "0.5", 288), ("FREEPRUNER_TOKENS", "64", 64)])
def test_fitprune_alone_refuses_a_vision_budget_it_would_ignore(variable, value, kept):
    recipe = {"FITPRUNE_RECIPE": "llava-v1.5-7b@60", variable: value}
    with pytest.raises(ConfigError) as err:
        from_env({"FREEPRUNER_METHOD": "fitprune", **recipe})
    assert f"{variable} is set" in str(err.value) and "freepruner+fitprune" in str(err.value)
    assert from_env({"FREEPRUNER_METHOD": "freepruner+fitprune", **recipe}).budget(576) == kept


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_llm_methods_that_keep_a_fraction_take_the_ratio(method):
    assert from_env({"FREEPRUNER_METHOD": method, "FREEPRUNER_RATIO": "0.5"}).ratio == 0.5


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().ratio = 0.5


def test_config_command_prints_setting_and_refuses_bad_values(monkeypatch, capsys):
    from llava_freepruner.tools.cli import main

    for name in [n for n in __import__("os").environ if n.startswith(("FREEPRUNER_", "FITPRUNE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FREEPRUNER_RATIO", "0.25")
    assert main(["config"]) == 0
    assert "keeping 144 of 576 visual tokens per image" in capsys.readouterr().out
    monkeypatch.setenv("FREEPRUNER_METHOD", "freepruner+fitprune")
    monkeypatch.setenv("FITPRUNE_RECIPE", "llava-v1.5-7b@99")
    assert main(["config"]) == 2
    assert "FITPRUNE_RECIPE='llava-v1.5-7b@99'" in capsys.readouterr().err
