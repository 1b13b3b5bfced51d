"""lmms-eval's own command, unchanged, on the Qwen-VL classes: ``python -m lmms_eval --model
qwen2_5_vl`` (and ``qwen2_vl``, ``qwen3_vl``) prunes a tiny checkpoint's image tokens under FREEPRUNER_*.

Here rather than beside the ``llava_hf`` test in tests/transformers: lmms-eval's Qwen models
hand every image to ``qwen_vl_utils.process_vision_info``, which imports torchvision, and load
transformers' Qwen processor with ``AutoProcessor``, whose video half needs torchvision too.
``eval_scripts/install_lmms_eval.sh`` adds qwen-vl-utils wherever torchvision loads.

The checkpoints are ``hf_tiny_qwen.save`` at the default TinyQwen sizes; the task is the
``llava_hf`` test's (``tests/transformers/lmms_task``: four scikit-image photos, a question each,
read with ``dataset_path: json``), so nothing comes from the hub. ``--model qwen2_5_vl`` and
``qwen3_vl`` resolve to lmms-eval's chat classes, ``qwen2_vl`` to its plain one.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from llava_freepruner.fixtures.hf_tiny_qwen import TinyQwen, save  # noqa: E402
from llava_freepruner.hosts import ENV_PREFIXES  # noqa: E402
from llava_freepruner.runtime.stats import read_jsonl  # noqa: E402

TASK = "freepruner_photos"
TASK_FILES = Path(__file__).parent.parent / "transformers" / "lmms_task"
PHOTOS = {   # photo (height x width) -> (question, answer)
    "astronaut": ("Who is in the picture?", "astronaut"),     # 512 x 512
    "coffee": ("What is in the cup?", "coffee"),              # 400 x 600
    "chelsea": ("What animal is this?", "cat"),               # 300 x 451
    "rocket": ("What is in the image?", "rocket"),            # 427 x 640
}
# model -> (its --model_args beyond pretrained, merged tokens of each photo in PHOTOS' order).
# qwen2_vl, qwen2_5_vl: qwen_vl_utils and the processor resize each photo to multiples of 28 px
# (a 2 x 2 block of 14 px patches) within max_pixels = 224 x 224: 8 x 8, then 6 x 9 merged tokens.
# qwen3_vl: its chat class passes no pixel bounds for images and calls the processor with
# do_resize=False, so a photo is only rounded to multiples of 32 px: 16 x 16, 12 x 19, 9 x 14, 13 x 20.
SMALL = "max_pixels=50176,min_pixels=3136"
MODELS = {
    "qwen2_5_vl": (SMALL, [64, 54, 54, 54]),
    "qwen2_vl": (SMALL, [64, 54, 54, 54]),
    "qwen3_vl": ("", [256, 228, 126, 260]),
}


@pytest.fixture(scope="module")
def qwen_vl_utils():
    try:
        import qwen_vl_utils
    except ImportError as err:
        pytest.fail(f"lmms-eval's Qwen models need qwen-vl-utils ({err}): "
                    "bash eval_scripts/install_lmms_eval.sh .venv-video/bin/python installs it")
    return qwen_vl_utils


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("lmms_task")
    for name in ("freepruner_photos.yaml", "photos.py"):
        shutil.copy(TASK_FILES / name, folder / name)
    with open(folder / "photos.jsonl", "w", encoding="utf-8") as handle:
        for name, (question, answer) in PHOTOS.items():
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.png")
            handle.write(json.dumps({"image": f"{name}.png", "question": question, "answer": answer}) + "\n")
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_qwen_checkpoints")
    written = {}

    def get(kind):
        if kind not in written:
            written[kind] = save(TinyQwen(kind=kind), str(root / kind))
        return written[kind]

    return get


def lmms_eval(model, checkpoint, task_dir, work, **variables):
    """Run the lmms-eval command line in a fresh interpreter, with only ``variables`` of the plugin's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "datasets_cache"), **variables)
    extra = MODELS[model][0]
    command = [sys.executable, "-m", "lmms_eval", "--model", model,
               "--model_args", f"pretrained={checkpoint},device=cpu,device_map=cpu" + (f",{extra}" if extra else ""),
               "--tasks", TASK, "--include_path", str(task_dir), "--batch_size", "1",
               "--output_path", str(work / "results"), "--log_samples"]
    # cwd outside the repository: lmms-eval records the git commit of its working directory
    run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    # lmms-eval logs an exception during the evaluation and still exits 0
    assert "Error during evaluation" not in log and "Traceback" not in log, log[-4000:]
    [samples] = list((work / "results").glob(f"*/*_samples_{TASK}.jsonl"))
    answers = {s["doc_id"]: s["filtered_resps"] for s in read_jsonl(samples)}
    assert sorted(answers) == list(range(len(PHOTOS)))
    return log, answers


@pytest.mark.parametrize("model", sorted(MODELS))
def test_ratio_one_answers_as_unpatched_and_half_keeps_half_of_each_images_tokens(
        model, qwen_vl_utils, checkpoints, task_dir, tmp_path):
    checkpoint = checkpoints(model)
    runs = {}
    for name, variables in (("unpatched", {}), ("1.0", {"FREEPRUNER_RATIO": "1.0"}),
                            ("0.5", {"FREEPRUNER_RATIO": "0.5"})):
        work = tmp_path / name
        work.mkdir()
        if variables:
            variables["FREEPRUNER_STATS"] = str(work / "stats.jsonl")
        runs[name] = lmms_eval(model, checkpoint, task_dir, work, **variables)

    assert "freePruner" not in runs["unpatched"][0]
    assert runs["1.0"][1] == runs["unpatched"][1]
    merged = MODELS[model][1]
    whole = read_jsonl(tmp_path / "1.0" / "stats.jsonl")
    assert sorted((r["tokens_in"], r["tokens_out"]) for r in whole) == sorted((n, n) for n in merged)

    log, _ = runs["0.5"]
    assert "freePruner: freepruner keeping round(0.5 x its merged tokens) of every image and video frame" in log
    halves = read_jsonl(tmp_path / "0.5" / "stats.jsonl")
    # one record per question (lmms-eval orders them by its own key), round half up
    assert sorted((r["tokens_in"], r["tokens_out"]) for r in halves) == sorted((n, (n + 1) // 2) for n in merged)
