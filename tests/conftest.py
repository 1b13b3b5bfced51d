"""Shared fixtures: tiny offline LLaVA checkpoints, real photos, question files.

The tests in this folder run in the upstream-llava environment; the
transformers backend has its own folder (``tests/transformers``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from llava_freepruner.fixtures import tiny

# Tiny models gain nothing from a thread pool; on a small shared machine its
# spinning makes them several times slower.
torch.set_num_threads(1)

if importlib.util.find_spec("llava") is None:
    collect_ignore_glob = ["test_*.py"]     # not the upstream environment

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")

# Files that take minutes on two cores start first, longest first: `run_tests.sh` hands whole
# files to its workers in collection order, and one of these handed out last would run alone
# at the end.
LONG_FILES = ("tests/transformers/test_toy_accuracy.py", "tests/transformers/test_syncs.py", "tests/test_gpu_check.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, name in enumerate(LONG_FILES) if item.nodeid.startswith(name + "::")), len(LONG_FILES))

    items.sort(key=rank)        # stable: the other files, and the tests in each file, keep their order


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Build tiny checkpoints lazily, once per session: ``checkpoints(TinySpec(...))``."""
    root = str(tmp_path_factory.mktemp("checkpoints"))
    return lambda spec=None: tiny.build(root, spec)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Real photos of different shapes from scikit-image, as PNG files."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def question_file(photo_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    with open(path, "w") as handle:
        for i, name in enumerate(PHOTOS):
            handle.write(json.dumps({"question_id": i, "image": f"{name}.png", "text": "What is in the image?"}) + "\n")
    return path


@pytest.fixture
def unpatched():
    """The test starts and ends with the plugin removed."""
    import llava_freepruner

    llava_freepruner.remove()
    yield
    llava_freepruner.remove()


def load_llava(path):
    """(tokenizer, model in eval mode, image processor) through upstream's loader, on CPU."""
    from llava.model.builder import load_pretrained_model

    # upstream picks the class by name ("mistral" in it: LlavaMistralForCausalLM), as its eval scripts do
    tokenizer, model, processor, _ = load_pretrained_model(path, None, os.path.basename(path), device="cpu")
    return tokenizer, model.eval(), processor


def run_upstream(module, args, env_vars, cwd, timeout=300):
    """Run an unchanged upstream entry point (``python -m llava.eval.X``) in a
    fresh interpreter; only the plugin's .pth hook can activate it there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env_vars)
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )

