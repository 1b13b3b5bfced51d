"""FitPrune recipes: how many visual tokens each decoder layer deletes.

A recipe is addressed either by a built-in name ``model@percent`` (the official
recipes, labelled by FLOPs reduction) or by the path of a JSON file written by the
fitting command.
"""

import json
import os
from dataclasses import dataclass, field

FORMAT = "fitprune-recipe/1"

_OFFICIAL = {
    ("llava-v1.5-7b", 576): {
        10: "0,0,1,2,1,0,1,4,5,5,11,4,2,2,0,0,1,1,2,4,2,10,1,1,1,2,1,1,0,1,0,0",
        20: "0,0,3,3,1,1,4,16,14,15,24,4,2,3,2,0,6,0,5,13,4,19,2,1,1,1,1,1,2,1,0,0",
        30: "0,0,7,6,4,5,16,40,24,21,24,4,2,3,4,0,16,0,11,26,6,32,3,1,0,1,2,2,4,0,0,0",
        40: "0,1,21,13,14,11,41,53,29,15,14,5,1,4,5,1,26,1,13,28,6,27,2,1,0,0,1,1,2,0,0,0",
        50: "3,7,49,24,29,17,59,41,26,8,10,6,2,5,7,2,30,3,13,27,5,23,2,1,0,0,1,1,2,0,0,0",
        55: "6,17,69,31,34,19,59,30,23,6,8,7,2,5,8,2,29,4,12,25,4,19,2,1,0,0,1,0,1,0,0,0",
        60: "14,33,89,36,36,20,55,21,18,4,7,5,2,5,7,4,26,5,11,24,4,18,2,1,0,0,1,0,1,0,0,0",
        70: "48,79,118,41,33,17,36,9,9,2,3,2,1,3,4,8,18,7,8,20,4,13,2,1,0,0,1,0,1,0,0,0",
        80: "128,127,118,35,26,8,13,3,2,1,0,0,0,2,1,8,7,8,5,11,2,6,1,1,0,0,0,1,0,0,0,0",
        90: "262,153,80,19,13,1,2,0,0,0,0,0,0,0,0,1,1,2,1,2,0,1,0,0,0,0,0,1,0,0,0,0",
    },
    ("llava-next-7b", 2880): {
        40: "7,73,162,124,119,148,131,151,105,26,30,17,5,19,44,10,73,60,67,61,32,39,0,3,1,5,0,0,0,0,0,0",
        60: "98,313,279,218,201,221,167,132,63,12,11,5,1,8,26,13,83,57,56,58,24,42,0,2,1,5,0,0,0,0,0,0",
    },
}


class RecipeError(ValueError):
    """A recipe name or file that cannot be used."""


@dataclass(frozen=True)
class Recipe:
    name: str
    num_visual_tokens: int
    deletions: tuple
    metadata: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "deletions", tuple(self.deletions))
        _check_schedule(self.name, self.num_visual_tokens, self.deletions)

    @property
    def num_layers(self):
        return len(self.deletions)

    def alive_after_each_layer(self):
        alive, out = self.num_visual_tokens, []
        for k in self.deletions:
            alive -= k
            out.append(alive)
        return out

    def to_json(self):
        record = {"format": FORMAT, "model": self.name, "num_visual_tokens": self.num_visual_tokens,
                  "num_layers": self.num_layers}
        record.update(self.metadata)
        record["deletions"] = list(self.deletions)
        return record

    def save(self, path):
        record = self.to_json()
        deletions = record.pop("deletions")
        # the schedule on one line keeps the file short and readable
        text = json.dumps(record, indent=2)[:-2] + ',\n  "deletions": ' + json.dumps(deletions) + "\n}\n"
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


def _check_schedule(name, num_visual_tokens, deletions):
    if not isinstance(num_visual_tokens, int) or isinstance(num_visual_tokens, bool) or num_visual_tokens < 1:
        raise RecipeError(f"recipe {name!r}: num_visual_tokens={num_visual_tokens!r} must be a positive integer")
    if not deletions:
        raise RecipeError(f"recipe {name!r}: deletions is empty; expected one integer per decoder layer")
    bad = [k for k in deletions if not isinstance(k, int) or isinstance(k, bool) or k < 0]
    if bad:
        raise RecipeError(f"recipe {name!r}: deletions must be non-negative integers, got {bad[:5]}")
    if sum(deletions) > num_visual_tokens:
        raise RecipeError(f"recipe {name!r}: deletions sum to {sum(deletions)}, more than its "
                          f"num_visual_tokens={num_visual_tokens}")


def builtin_names():
    return [f"{model}@{pct}" for (model, _), table in _OFFICIAL.items() for pct in table]


def builtin_recipe(name):
    model, _, pct = name.partition("@")
    for (known, tokens), table in _OFFICIAL.items():
        if known == model and pct.isdigit() and int(pct) in table:
            deletions = [int(x) for x in table[int(pct)].split(",")]
            return Recipe(name, tokens, deletions, {"target_reduction": int(pct) / 100, "source": "official"})
    raise RecipeError(f"unknown built-in FitPrune recipe {name!r}; built-in recipes: {', '.join(builtin_names())}")


def load_recipe(spec):
    """A built-in recipe (``model@percent``) or a recipe JSON file."""
    if not isinstance(spec, str) or not spec.strip():
        raise RecipeError(f"FitPrune recipe {spec!r} must be a built-in name ({', '.join(builtin_names())}) "
                          "or the path of a recipe JSON file")
    spec = spec.strip()
    if os.path.isfile(spec):
        return _read_recipe_file(spec)
    if "@" in spec and os.sep not in spec:
        return builtin_recipe(spec)
    raise RecipeError(f"FitPrune recipe {spec!r} is neither an existing file nor a built-in name; "
                      f"built-in recipes: {', '.join(builtin_names())}")


def read_json_object(path, what, error=RecipeError):
    """The JSON object in the file ``path``; ``error`` naming ``what`` when it holds none."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{what}: cannot be read as JSON ({err})") from None
    if not isinstance(record, dict):
        raise error(f"{what}: expected a JSON object, got {type(record).__name__}")
    return record


def _read_recipe_file(path):
    record = read_json_object(path, f"recipe file {path}")
    missing = [key for key in ("num_visual_tokens", "deletions") if key not in record]
    if missing:
        raise RecipeError(f"recipe file {path}: missing field(s) {', '.join(missing)}; a recipe needs "
                          "num_visual_tokens (int) and deletions (one int per layer)")
    if not isinstance(record["deletions"], list):
        raise RecipeError(f"recipe file {path}: deletions must be a list of integers, "
                          f"got {type(record['deletions']).__name__}")
    if "num_layers" in record and record["num_layers"] != len(record["deletions"]):
        raise RecipeError(f"recipe file {path}: num_layers={record['num_layers']} but deletions has "
                          f"{len(record['deletions'])} entries")
    metadata = {k: v for k, v in record.items()
                if k not in ("format", "model", "num_visual_tokens", "num_layers", "deletions")}
    name = record.get("model") or os.path.basename(path)
    try:
        return Recipe(str(name), record["num_visual_tokens"], record["deletions"], metadata)
    except RecipeError as err:
        raise RecipeError(f"recipe file {path}: {err}") from None
