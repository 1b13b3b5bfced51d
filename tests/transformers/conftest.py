"""Transformers-backend tests: tiny random LLaVA checkpoints of transformers' own classes.

Collected only where the installed transformers is one the backend supports.
"""

import pytest
import torch
import transformers

from llava_freepruner.runtime.backends.transformers_llava import check_version
from llava_freepruner.config import ConfigError

try:
    check_version(transformers.__version__)
except ConfigError:
    collect_ignore_glob = ["test_*.py"]

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models():
    """``tiny_models(TinyHF(...))`` -> (model, processor), built once per spec."""
    from llava_freepruner.fixtures import hf_tiny

    built = {}

    def get(spec=hf_tiny.TinyHF()):
        if spec not in built:
            built[spec] = hf_tiny.build(spec)
        return built[spec]

    return get


@pytest.fixture(scope="session")
def photos():
    import skimage.data
    from PIL import Image

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            for name in ("astronaut", "coffee", "chelsea", "rocket")}


@pytest.fixture
def plugin():
    """Apply the plugin with a configuration: ``plugin(ratio=0.5)``; removed after the test."""
    import llava_freepruner
    from llava_freepruner.config import Config

    llava_freepruner.remove()
    yield lambda **fields: llava_freepruner.apply(Config(**fields))
    llava_freepruner.remove()


@pytest.fixture(scope="session")
def qwen_models():
    """``qwen_models(TinyQwen(...))`` -> (model, processor), built once per spec."""
    from llava_freepruner.fixtures import hf_tiny_qwen

    built = {}

    def get(spec=hf_tiny_qwen.TinyQwen()):
        if spec not in built:
            built[spec] = hf_tiny_qwen.build(spec)
        return built[spec]

    return get
