"""Tests that need transformers' video processors, and so torchvision.

Collected only where torchvision imports beside torch and the installed transformers is
one the backend supports: the `video` environment of eval_scripts/run_tests.sh
(``bash eval_scripts/install.sh --video .venv-video``). Elsewhere nothing here is
collected, so the other environments run as before.
"""

import pytest
import torch


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:        # absent, or built for another torch (it then fails to load)
        return False
    return True


def _supported_transformers() -> bool:
    import transformers

    from llava_freepruner.runtime.backends.transformers_llava import check_version
    from llava_freepruner.config import ConfigError

    try:
        check_version(transformers.__version__)
    except ConfigError:
        return False
    return True


if not (_torchvision_imports() and _supported_transformers()):
    collect_ignore_glob = ["test_*.py"]

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(kind)`` -> folder of a tiny random checkpoint saved with its real
    transformers processor (video processor included), written once per kind."""
    from llava_freepruner.fixtures.hf_tiny import TinyHF, save

    root = tmp_path_factory.mktemp("tiny_video_checkpoints")
    written = {}

    def get(kind):
        if kind not in written:
            written[kind] = save(TinyHF(kind=kind), str(root / kind))
        return written[kind]

    return get


@pytest.fixture(scope="session")
def clip_folder():
    """Debian's opencv-doc sample clips (fetched once with apt-get download), or a skip."""
    pytest.importorskip("av")
    from llava_freepruner.fixtures import video_io

    try:
        return video_io.clip_folder()
    except RuntimeError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def clip(clip_folder):
    """``clip(name, frames)`` -> (frames, height, width, 3) uint8 array of an opencv-doc clip
    (``vtest.avi``, ``Megamind.avi``, ``tree.avi``), frames sampled uniformly, as transformers'
    examples pass a video to the processor."""
    import numpy as np

    from llava_freepruner.fixtures import video_io

    decoded = {}

    def get(name, frames):
        if (name, frames) not in decoded:
            decoded[name, frames] = np.stack([np.asarray(frame) for frame in
                                              video_io.read_frames(f"{clip_folder}/{name}", frames)])
        return decoded[name, frames]

    return get


@pytest.fixture
def plugin():
    """Apply the plugin with a configuration: ``plugin(ratio=0.5)``; removed after the test."""
    import llava_freepruner
    from llava_freepruner.config import Config

    llava_freepruner.remove()
    yield lambda **fields: llava_freepruner.apply(Config(**fields))
    llava_freepruner.remove()
