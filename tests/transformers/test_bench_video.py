"""``bench --video FRAMES``: the video classes' rows (frame and temporal modes) next to
an oracle of the same mode, on the tiny shapes of Video-LLaVA and LLaVA-NeXT-Video."""

import json

import pytest

from llava_freepruner.tools.cli import main


def bench(out, name, frames, *extra):
    code = main(["bench", "--backend", "transformers", "--random-weights", name, "--video", str(frames),
                 "--llm-layers", "1", "--vision-layers", "2", "--methods", "freepruner", "--ratios", "1.0,0.5",
                 "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--text-tokens", "12",
                 "--device", "cpu", *extra, "--out", str(out)])
    assert code == 0
    return json.loads((out / "results.json").read_text())


def test_video_llava_rows_count_every_frame_and_its_cls(tmp_path):
    data = bench(tmp_path, "tiny-video-llava-hf", 3)
    rows = {(r["method"], r["ratio"], r["video_mode"]): r for r in data["records"]}
    assert sorted(rows) == sorted((m, r, mode) for m in ("oracle", "freepruner") for r in (1.0, 0.5)
                                  for mode in ("frame", "temporal"))
    for (method, ratio, mode), r in rows.items():
        assert r["frames"] == 3 and r["layer_tokens"] == [12 + r["visual_tokens"]]
        # 224 px: 16 x 16 patches + [CLS] per frame; r = 0.5 keeps 128 patches + [CLS]
        if mode == "frame":
            assert r["visual_tokens"] == (3 * 257 if ratio == 1.0 else 3 * 129), (method, ratio)
            assert r["budget"] == (257 if ratio == 1.0 else 129)
        else:       # the moving square leaves most cells of frames 2 and 3 redundant
            assert r["visual_tokens"] < rows[(method, ratio, "frame")]["visual_tokens"]
            assert r["visual_tokens"] == rows[("oracle", ratio, "temporal")]["visual_tokens"]
        oracle = rows[("oracle", ratio, mode)]
        assert r["efficiency"] == pytest.approx(oracle["ttft_ms"] / r["ttft_ms"], rel=1e-3)
    assert data["meta"]["video_frames"] == 3
    report = (tmp_path / "results.md").read_text()
    assert "a 3-frame synthetic clip" in report and "| mode | frames |" in report


def test_llava_next_video_rows_count_pooled_cells(tmp_path):
    data = bench(tmp_path, "tiny-llava-next-video-hf", 2, "--video-modes", "frame")
    rows = {(r["method"], r["ratio"]): r for r in data["records"]}
    assert {r["video_mode"] for r in data["records"]} == {"frame"}
    for method in ("oracle", "freepruner"):     # 12 x 12 cells per frame after 2 x 2 pooling
        assert rows[(method, 1.0)]["visual_tokens"] == 2 * 144
        assert rows[(method, 0.5)]["visual_tokens"] == 2 * 72


@pytest.mark.parametrize("args, message", [
    (["--random-weights", "tiny-llava-1.5-hf", "--video", "4"], "--video FRAMES goes with a random-weights video model: expected --random-weights one of video-llava-7b-hf"),
    (["--random-weights", "tiny-video-llava-hf"], "tiny-video-llava-hf is a video model: give --video FRAMES"),
    (["--random-weights", "tiny-video-llava-hf", "--video", "0"], "--video 0 is not valid: expected a number of frames >= 1"),
    (["--random-weights", "tiny-video-llava-hf", "--video", "2", "--video-modes", "frame,spatial"],
     "--video-modes: unknown mode 'spatial'; expected some of frame, temporal"),
    (["--random-weights", "tiny-llava-1.5-hf", "--video-modes", "frame"], "--video-modes applies to video rows only"),
])
def test_bad_video_options_are_refused_by_name_before_writing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--backend", "transformers", *args, "--llm-layers", "1", "--vision-layers", "2",
                 "--device", "cpu", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_video_needs_the_transformers_backend(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--random-weights", "llava-v1.5-7b", "--video", "8", "--device", "cpu", "--out", str(out)]) == 2
    assert "--video needs --backend transformers" in capsys.readouterr().err
    assert not out.exists()
