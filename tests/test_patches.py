"""Each patch in patches/ applies cleanly to the upstream text it targets, and does what it says."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval_helpers import REPO, subprocess_env

PATCHES = REPO / "patches"
llava = pytest.importorskip("llava")
LLAVA_PARENT = Path(llava.__file__).resolve().parents[1]


def targets(patch: Path) -> list:
    return re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.M)


def pre_image(patch: Path, name: str) -> str:
    """The part of ``name`` a patch shows (context and removed lines), at its line
    numbers; lines the patch does not show are placeholder comments. Upstream's eval
    shell scripts are not installed anywhere, and the project stores no copy of them."""
    lines, target = {}, None
    for text in patch.read_text().splitlines():
        if text.startswith("+++ b/"):
            target = text[6:].strip()
        elif text.startswith("@@") and target == name:
            line = int(re.match(r"@@ -(\d+)", text).group(1))
        elif target == name and text[:1] in (" ", "-") and not text.startswith("---"):
            lines[line] = text[1:]
            line += 1
    return "\n".join(lines.get(i, "# (not shown by the patch)") for i in range(1, max(lines) + 1)) + "\n"


def upstream_tree(patch: Path, root: Path) -> Path:
    """Put the upstream files a patch targets into ``root``: installed llava files as
    they are, shell scripts as reconstructed by :func:`pre_image`."""
    for name in targets(patch):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("llava/"):
            shutil.copyfile(LLAVA_PARENT / name, root / name)
        else:
            (root / name).write_text(pre_image(patch, name))
    return root


def apply(patch: Path, root: Path, dry_run=False) -> None:
    command = ["patch", "-p1", "--forward", "-d", str(root), "-i", str(patch)] + (["--dry-run"] if dry_run else [])
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not re.search(r"fuzz|offset|FAILED|hunk", done.stdout, re.I), done.stdout  # clean, no guessing


ALL = sorted(PATCHES.glob("*.patch"))


def test_there_are_patches():
    assert [p.name for p in ALL] == ["llava-activate-freepruner.patch", "llava-eval-chunks.patch",
                                     "scripts-v1_5-eval-tagged-answers.patch"]


@pytest.mark.parametrize("patch", ALL, ids=lambda p: p.stem)
def test_patch_applies_cleanly(patch, tmp_path):
    root = upstream_tree(patch, tmp_path)
    apply(patch, root, dry_run=True)
    done = subprocess.run(["git", "apply", "--check", "-p1", str(patch)], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_chunk_patch_serves_empty_chunks_instead_of_index_error(tmp_path):
    patch = PATCHES / "llava-eval-chunks.patch"
    apply(patch, upstream_tree(patch, tmp_path))
    for name in ("model_vqa_loader", "model_vqa_science", "model_vqa_mmbench"):
        spec = importlib.util.spec_from_file_location(f"patched_{name}", tmp_path / f"llava/eval/{name}.py")
        if name == "model_vqa_mmbench":
            pytest.importorskip("pandas")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert [module.get_chunk([0, 1], 5, k) for k in range(5)] == [[0], [1], [], [], []]
        assert [module.get_chunk(list(range(5)), 4, k) for k in range(4)] == [[0, 1], [2, 3], [4], []]
        assert module.get_chunk([], 2, 1) == []


def test_activation_patch_activates_without_the_import_hook(tmp_path):
    patch = PATCHES / "llava-activate-freepruner.patch"
    shutil.copytree(LLAVA_PARENT / "llava", tmp_path / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    apply(patch, tmp_path)
    site = str(LLAVA_PARENT)
    code = "import llava, sys; m = sys.modules.get('llava_freepruner'); print(m is not None and m.is_applied())"
    # python -S: no site-packages processing, hence no .pth hook; the patched __init__ alone must do it.
    env = subprocess_env(FREEPRUNER_RATIO="0.5", FREEPRUNER_DEVICE="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), site])
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "True", done.stderr[-2000:]
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), site])  # plugin absent: a no-op
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]


def test_script_patch_names_answers_after_the_pruning_tag(tmp_path):
    patch = PATCHES / "scripts-v1_5-eval-tagged-answers.patch"
    apply(patch, upstream_tree(patch, tmp_path))
    env = subprocess_env(FREEPRUNER_RATIO="0.5")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    for script in sorted((tmp_path / "scripts/v1_5/eval").glob("*.sh")):
        text = script.read_text()
        assert not re.search(r"answers/(\$SPLIT/)?llava-v1\.5-13b[._]", text), script.name
        line = next(l for l in text.splitlines() if l.startswith("CKPT="))
        done = subprocess.run(["bash", "-c", f'{line}; echo "$CKPT"'], env=env, capture_output=True, text=True)
        assert done.stdout.strip() == "llava-v1.5-13b__freepruner-r0.5", (script.name, done.stderr)
