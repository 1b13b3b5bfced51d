"""torchao's warnings about kernel files that cannot load here stay out of every run's output."""

import logging
import os
import subprocess
import sys

import pytest

from llava_freepruner.runtime.quantization import quiet_torchao_import


def _kept(message):
    quiet_torchao_import()
    record = logging.LogRecord("torchao", logging.WARNING, __file__, 1, message, None, None)
    return logging.getLogger("torchao").filter(record)


def test_kernels_built_for_another_python_are_dropped_and_other_warnings_kept():
    assert not _kept("Failed to load /site/torchao/_C_mxfp8.cpython-27-x86_64-linux-gnu.so: Could not load")
    assert _kept("Skipping import of cpp extensions due to incompatible torch version.")
    assert _kept("Failed to load the quantizer config")


def test_importing_torchao_under_the_plugin_prints_nothing():
    pytest.importorskip("torchao")
    pytest.importorskip("transformers", minversion="4.57")
    script = ("import llava_freepruner; from llava_freepruner.config import Config; "
              "llava_freepruner.apply(Config(ratio=0.5)); import transformers.quantizers.auto; import torchao")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEPRUNER_", "FITPRUNE_"))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stderr and "is an Enum subclass" not in done.stderr
