"""The accuracy command's grid: FitPrune recipes per ratio and how cells are validated."""

import pytest

from llava_freepruner.accuracy.cells import grid, parse_recipes
from llava_freepruner.config import ConfigError


def test_one_recipe_serves_every_ratio_and_a_mapping_serves_each_ratio_its_own():
    assert parse_recipes(None) == {}
    assert parse_recipes("r.json") == {None: "r.json"}
    assert parse_recipes("0.5=r50.json, 0.25=r75.json") == {0.5: "r50.json", 0.25: "r75.json"}
    cells = grid(["fitprune", "freepruner"], [0.5, 0.25], parse_recipes("0.5=r50.json,0.25=r75.json"))
    recipes = {c.name: c.config.fitprune_recipe for c in cells}
    assert recipes["fitprune@0.5"] == "r50.json" and recipes["fitprune@0.25"] == "r75.json"
    assert [c.name for c in cells] == ["fitprune@0.5", "fitprune@0.25", "freepruner@0.5", "freepruner@0.25"]


def test_the_unpruned_model_gets_one_cell_whatever_the_ratios():
    cells = grid(["none", "freepruner"], [0.5, 0.25])
    assert [c.name for c in cells] == ["none@1", "freepruner@0.5", "freepruner@0.25"]
    assert cells[0].ratio == 1.0 and not cells[0].config.prunes
    assert [c.name for c in grid(["freepruner"], [0.5, 1.0])] == ["freepruner@0.5", "freepruner@1"]


def test_fitprune_alone_takes_its_budget_from_the_recipe_of_the_ratio_and_the_rest_from_the_ratio():
    cells = {c.name: c.config for c in grid(["fitprune", "fastv", "freepruner+fitprune"], [0.5],
                                            parse_recipes("r50.json"))}
    assert cells["fitprune@0.5"].ratio is None and cells["fitprune@0.5"].fitprune_recipe == "r50.json"
    assert cells["fastv@0.5"].ratio == cells["freepruner+fitprune@0.5"].ratio == 0.5


def test_a_ratio_without_a_recipe_and_a_bad_mapping_are_refused_by_name():
    with pytest.raises(ConfigError, match="no recipe for ratio 0.11 \\(it has 0.5\\)"):
        grid(["fitprune"], [0.5, 0.11], parse_recipes("0.5=r50.json"))
    with pytest.raises(ConfigError, match="'half=r.json': expected RATIO=FILE"):
        parse_recipes("half=r.json")
    with pytest.raises(ConfigError, match="FITPRUNE_RECIPE is not set"):
        grid(["fitprune"], [0.5])


def test_visual_tokens_of_a_method_inside_the_llm_are_averaged_over_its_layers(tmp_path):
    import json

    from llava_freepruner.accuracy.runner import summarize

    cell = grid(["fastv"], [0.5])[0]
    records = [{"family": "count", "correct": True, "unpruned_tokens": 256},
               {"family": "color", "correct": False, "unpruned_tokens": 256}]
    stats = tmp_path / "fastv@0.5.stats.jsonl"
    stats.write_text("".join(json.dumps({"tokens_out": 256, "llm_visual_alive": alive}) + "\n"
                             for alive in ([256, 256, 128, 128], [256, 256, 64, 64])))
    row = summarize(cell, records, str(stats))
    assert row["visual_tokens"] == (192 + 160) / 2 and row["tokens_from"] == "llm_layer_mean"
    assert row["accuracy"] == 0.5 and row["families"] == {"color": 0.0, "count": 1.0}
    stats.write_text(json.dumps({"tokens_out": 128}) + "\n")
    assert summarize(cell, records, str(stats))["visual_tokens"] == 128
