"""Helpers shared by the evaluation tests: subprocess environment and a fast checkpoint."""

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**variables) -> dict:
    """The test environment without plugin variables, with this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    path = [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", **variables)
    return env


def one_token_checkpoint(checkpoint: str, root: Path) -> str:
    """A copy of ``checkpoint`` whose answers end after one token.

    Every token id is an end-of-sequence id in its generation config, so the
    entry points that hard-code 1024 new tokens (ScienceQA, MMBench) finish fast.
    """
    target = Path(root) / (Path(checkpoint).name + "-onetoken")
    if not target.exists():
        shutil.copytree(checkpoint, target)
        vocab = json.loads((target / "config.json").read_text())["vocab_size"]
        generation = json.loads((target / "generation_config.json").read_text())
        generation["eos_token_id"] = list(range(vocab))
        (target / "generation_config.json").write_text(json.dumps(generation))
    return str(target)
