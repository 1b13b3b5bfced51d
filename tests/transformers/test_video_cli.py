"""``fidelity --video`` and ``visualize --video`` end to end: a tiny random CLIP tower
and a short clip written with PyAV (a still background, a square moving across it)."""

import json

import numpy as np
import pytest
import torch

from llava_freepruner.tools.cli import main

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A folder the commands read as a LLaVA checkpoint: config.json naming a tiny CLIP."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("video-cli")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     image_size=336, patch_size=14)).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(root / "clip")
    (root / "config.json").write_text(json.dumps({"mm_vision_tower": str(root / "clip"), "mm_vision_select_layer": -2,
                                                  "image_aspect_ratio": "pad"}))
    return root


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "moving.avi"
    background = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 112, 112, "yuv420p"
        for f in range(6):
            pixels = background.copy()
            pixels[40:72, 12 * f: 12 * f + 32] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_fidelity_video_writes_a_row_per_method_and_mode(llava_dir, clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fidelity", "--model-path", str(llava_dir), "--video", str(clip), "--frames", "4",
                 "--methods", "freepruner,grid", "--ratios", "0.5", "--tau", "0.9", "--out", str(out)]) == 0
    report = json.loads((out / "video_results.json").read_text())
    assert (report["frames"], report["tau"], report["clips"]) == (4, 0.9, ["moving.avi"])
    rows = {(r["method"], r["mode"]): r for r in report["records"]}
    assert sorted(rows) == [("freepruner", "frame"), ("freepruner", "temporal"), ("grid", "frame"), ("grid", "temporal")]
    for method in ("freepruner", "grid"):
        frame, temporal = rows[(method, "frame")], rows[(method, "temporal")]
        assert frame["kept"] == 4 * 288 and frame["saliency"] is None        # a CLIP tower has no saliency head
        # the still background repeats: frame mode spends budget on it, temporal mode does not
        assert temporal["kept"] < frame["kept"] and frame["redundant_kept"] > 0 == temporal["redundant_kept"]
        assert 0 < temporal["coverage"] <= 1
    assert "| freepruner | temporal | 0.5 |" in capsys.readouterr().out
    assert (out / "video_results.md").read_text().startswith("| method | mode | ratio | kept of 4 x 576 |")


def test_visualize_video_draws_a_strip_per_method_and_mode(llava_dir, clip, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "strip.png"
    assert main(["visualize", "--model-path", str(llava_dir), "--video", str(clip), "--frames", "3",
                 "--ratio", "0.25", "--video-modes", "frame,temporal", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "freepruner (frame): kept 432 of 3 x 576" in printed and "freepruner (temporal): kept" in printed
    width, height = Image.open(out).size
    assert width > height           # two strips (frame, temporal) stacked, three frames wide each


@pytest.mark.parametrize("command", ["fidelity", "visualize"])
def test_a_missing_clip_is_named_and_nothing_is_written(command, llava_dir, tmp_path, capsys):
    out = tmp_path / ("out" if command == "fidelity" else "strip.png")
    assert main([command, "--model-path", str(llava_dir), "--video", str(tmp_path / "nowhere.avi"),
                 "--out", str(out)]) == 2
    assert f"--video {str(tmp_path / 'nowhere.avi')!r}: no such file" in capsys.readouterr().err
    assert not out.exists()
