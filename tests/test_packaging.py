"""Real installs into a throwaway venv: both ``pip install .`` and ``pip install -e .``
put the import hook into site-packages, and uninstalling removes it."""

import base64
import hashlib
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

import llava_freepruner
from llava_freepruner.hosts import ENV_PREFIXES

REPO_ROOT = Path(__file__).resolve().parents[1]
PTH_NAME = "llava_freepruner_autoload.pth"
PROJECT_FILES = ["pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", PTH_NAME]

HOOK_STATE = (
    "import sys, llava_freepruner;"
    "print(llava_freepruner.__file__);"
    "print('llava_freepruner.autoload' in sys.modules);"
    "print(any(type(f).__name__ == 'HostImportWatcher' for f in sys.meta_path))"
)
METADATA = (
    "from importlib.metadata import metadata, requires;"
    "print(metadata('llava-freepruner')['Version']);"
    "print(metadata('llava-freepruner')['Requires-Python']);"
    "print(*requires('llava-freepruner'), sep='\\n')"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project, so builds leave no files in the checkout."""
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES + ["README.md"]:
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, root)
    shutil.copytree(
        REPO_ROOT / "llava_freepruner",
        root / "llava_freepruner",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return root


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    target = tmp_path_factory.mktemp("venv")
    venv.create(target, with_pip=True)
    return target / "bin" / "python"


def run(venv_python, *args, cwd, **env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.pop("PYTHONPATH", None)
    env.update(env_vars)
    result = subprocess.run(
        [str(venv_python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def record_row(path):
    """The RECORD row a correct wheel carries for ``path`` (name, sha256, size)."""
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.name},sha256={digest},{len(data)}"


def site_packages(venv_python):
    return Path(run(venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd="/").strip())


@pytest.mark.parametrize("mode", [[], ["-e"]], ids=["regular", "editable"])
def test_install_ships_the_hook_and_uninstall_removes_it(venv_python, project, tmp_path, mode):
    run(venv_python, "-m", "pip", "install", "-q", "--no-deps", *mode, str(project), cwd=tmp_path)
    site_dir = site_packages(venv_python)
    pth = site_dir / PTH_NAME
    assert pth.read_text() == (REPO_ROOT / PTH_NAME).read_text()
    (record,) = site_dir.glob("llava_freepruner-*.dist-info/RECORD")
    assert record_row(pth) in record.read_text().splitlines()

    package_file, imported, watching = run(venv_python, "-c", HOOK_STATE, cwd=tmp_path).split()
    assert (imported, watching) == ("False", "False")
    in_place = Path(package_file).is_relative_to(project)
    assert in_place == bool(mode), package_file

    _, imported, watching = run(
        venv_python, "-c", HOOK_STATE, cwd=tmp_path, FREEPRUNER_RATIO="0.5"
    ).split()
    assert (imported, watching) == ("True", "True")

    version, python_requires, *requirements = run(
        venv_python, "-c", METADATA, cwd=tmp_path
    ).splitlines()
    assert version == llava_freepruner.__version__
    assert python_requires == ">=3.10"
    assert "transformers" in requirements          # the core pins no transformers
    assert 'transformers==4.37.2; extra == "upstream"' in requirements
    assert not any(r.startswith("llava") for r in requirements)

    run(venv_python, "-m", "pip", "uninstall", "-q", "-y", "llava-freepruner", cwd=tmp_path)
    assert not pth.exists()
