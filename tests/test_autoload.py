"""The import hook: the .pth line and the finder that hands host modules (``llava``) to the plugin."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llava_freepruner
from llava_freepruner import autoload
from llava_freepruner.hosts import ENV_PREFIXES

REPO_ROOT = Path(__file__).resolve().parents[1]
PTH_FILE = REPO_ROOT / "llava_freepruner_autoload.pth"



def write_fake_llava(root):
    """A package named ``llava`` that has ``BODY_DONE`` only once its body has run."""
    package = root / "llava"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("BODY_DONE = True\n")
    return root


# ---------------------------------------------------------------- in-process finder


def pop_llava_modules():
    return {
        name: sys.modules.pop(name)
        for name in list(sys.modules)
        if name == "llava" or name.startswith("llava.")
    }


@pytest.fixture
def hook(monkeypatch, tmp_path):
    """Fresh hook state, a fake ``llava`` first on sys.path, and a recording activation.

    Yields the list of calls; each records whether llava's body had finished.
    Any real ``llava`` modules are hidden for the test and put back after it.
    """
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, autoload.HostImportWatcher)])
    monkeypatch.syspath_prepend(str(write_fake_llava(tmp_path)))
    calls = []

    def record_activation(name):
        calls.append((name, getattr(sys.modules.get(name), "BODY_DONE", False)))

    monkeypatch.setattr(llava_freepruner, "host_imported", record_activation)
    real_llava = pop_llava_modules()
    yield calls
    pop_llava_modules()
    sys.modules.update(real_llava)


def watchers():
    return [f for f in sys.meta_path if isinstance(f, autoload.HostImportWatcher)]


def test_activation_waits_for_llava_body_and_runs_once_per_import(hook):
    autoload.install()
    autoload.install()
    assert len(watchers()) == 1
    assert hook == []

    import llava

    assert hook == [("llava", True)]
    assert llava.BODY_DONE
    assert type(llava.__loader__).__name__ == "SourceFileLoader"
    assert llava.__spec__.loader is llava.__loader__
    # still watching: transformers' LLaVA modules are hosts too
    assert len(watchers()) == 1

    import llava  # noqa: F811

    assert hook == [("llava", True)]


def test_llava_already_imported_activates_immediately(hook):
    import llava  # noqa: F401

    assert hook == []
    autoload.install()
    assert hook == [("llava", True)]


def test_activation_errors_propagate_through_the_import(hook, monkeypatch):
    def refuse(name):
        raise SystemExit("FREEPRUNER_RATIO: bad value")

    monkeypatch.setattr(llava_freepruner, "host_imported", refuse)
    autoload.install()
    with pytest.raises(SystemExit, match="FREEPRUNER_RATIO"):
        import llava  # noqa: F401
    assert "llava" not in sys.modules


def test_failed_llava_body_does_not_activate(hook, tmp_path):
    (tmp_path / "llava" / "__init__.py").write_text("raise RuntimeError('broken llava')\n")
    autoload.install()
    with pytest.raises(RuntimeError, match="broken llava"):
        import llava  # noqa: F401
    assert hook == []


# ---------------------------------------------------------------- the .pth line


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run_with_pth(tmp_path, code, pythonpath, **env_vars):
    """Run ``code`` in a fresh interpreter whose only site dir holds a copy of the .pth.

    ``-S`` keeps whatever is installed in the running environment out of the picture.
    """
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(PTH_FILE, site_dir)
    env = clean_env(PYTHONPATH=os.pathsep.join(map(str, pythonpath)), **env_vars)
    script = f"import site, sys\nsite.addsitedir({str(site_dir)!r})\n{code}"
    return subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


REPORT_HOOK_STATE = """
print("imported:", "llava_freepruner" in sys.modules)
print("watching:", any(type(f).__name__ == "HostImportWatcher" for f in sys.meta_path))
"""


def test_pth_file_is_one_import_line_checking_the_same_prefixes():
    lines = PTH_FILE.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import ")
    assert repr(ENV_PREFIXES) in lines[0]


def test_pth_without_variables_imports_nothing(tmp_path):
    result = run_with_pth(
        tmp_path, REPORT_HOOK_STATE, [REPO_ROOT], LLAVA_FREEPRUNER_RATIO="0.5"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imported:", "False", "watching:", "False"]
    assert result.stderr == ""


@pytest.mark.parametrize("prefix", ENV_PREFIXES)
def test_pth_with_variable_activates_once_after_llava(tmp_path, prefix):
    fake_root = write_fake_llava(tmp_path / "fake")
    code = REPORT_HOOK_STATE + textwrap.dedent(
        """
        import llava_freepruner
        llava_freepruner.host_imported = lambda name: print(
            "activated, body done:", name, getattr(sys.modules[name], "BODY_DONE", False)
        )
        import llava
        import llava
        """
    )
    result = run_with_pth(tmp_path, code, [REPO_ROOT, fake_root], **{prefix + "X": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported: True",
        "watching: True",
        "activated, body done: llava True",
    ]


def test_pth_with_package_missing_is_silent(tmp_path):
    result = run_with_pth(tmp_path, REPORT_HOOK_STATE, [], FREEPRUNER_RATIO="0.5")
    assert result.returncode == 0
    assert result.stdout.split() == ["imported:", "False", "watching:", "False"]
    assert result.stderr == ""


@pytest.mark.parametrize(
    "init_body, expected_stderr",
    [
        (
            "raise RuntimeError('half-installed')\n",
            "llava_freepruner: import hook not installed: RuntimeError('half-installed')\n",
        ),
        ("import no_such_dependency_anywhere\n", ""),
    ],
)
def test_pth_with_broken_package_never_raises(tmp_path, init_body, expected_stderr):
    broken = tmp_path / "broken" / "llava_freepruner"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(init_body)
    result = run_with_pth(
        tmp_path, "print('still running')\n", [broken.parent], FREEPRUNER_RATIO="0.5"
    )
    assert result.returncode == 0
    assert result.stdout == "still running\n"
    assert result.stderr == expected_stderr
