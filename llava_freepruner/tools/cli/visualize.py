"""``python -m llava_freepruner visualize``: which patches each method keeps on one photo."""

from __future__ import annotations

import os
import sys

HELP = "draw the tokens each selection method keeps on a photo (pivotal, complementary, dropped)"


def add_arguments(parser) -> None:
    from ..vision import arguments

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="the photo to draw on")
    source.add_argument("--video", help="a video clip: one strip of frames per method and mode, tokens dropped "
                        "as temporally redundant in purple (see --frames, --video-modes, --tau)")
    parser.add_argument("--ratio", type=arguments.fraction, default=0.5, help="fraction of patch tokens kept (default 0.5)")
    parser.add_argument("--method", type=arguments.names, default=["freepruner"],
                        help="method name, or several separated by commas (one panel each); default freepruner")
    arguments.add_vision_source(parser)
    arguments.add_video_options(parser)
    parser.add_argument("--out", required=True, help="the PNG file to write")


def run(args) -> int:
    if args.video:
        return run_video(args)
    from ... import config as config_module
    from ..vision import images, img_focus, overlay, towers

    try:
        towers.check_methods(args.method)
        base = config_module.from_env()
        photo = images.open_image(args.image)
        vision = towers.open_vision(args.vision, args.model_path)
    except (ValueError, img_focus.WeightsUnavailable) as err:   # ConfigError is a ValueError
        print(f"llava_freepruner visualize: {err}", file=sys.stderr)
        return 2
    view, pixels = vision.prepare(photo)
    panels = []
    for name in args.method:
        selection = towers.run_method(vision.tower, pixels[None], name, args.ratio, base).selections[0]
        panels.append(overlay.draw_selection(view, vision.grid, selection, name))
        print(f"{name}: {overlay.describe(selection, vision.tower.num_patches)}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    overlay.side_by_side(panels).save(args.out)
    print(f"wrote {args.out}")
    return 0


def run_video(args) -> int:
    import torch

    from ... import config as config_module
    from ...fixtures import video_io
    from ..vision import img_focus, overlay, towers, video_fidelity

    try:
        towers.check_methods(args.method)
        base = config_module.from_env()
        frames = video_io.read_frames(args.video, args.frames)
        vision = towers.open_vision(args.vision, args.model_path)
    except (ValueError, img_focus.WeightsUnavailable) as err:   # ConfigError is a ValueError
        print(f"llava_freepruner visualize: {err}", file=sys.stderr)
        return 2
    views, pixels = zip(*(vision.prepare(frame) for frame in frames))
    strips = []
    for name in args.method:
        for mode in args.video_modes:
            clip = video_fidelity.select_clip(vision, torch.stack(pixels), name, args.ratio, mode, args.tau, base)
            strips.append(overlay.side_by_side([
                overlay.draw_selection(view, vision.grid, selection, f"{name}, {mode}, frame {f}", scale=1,
                                       redundant=clip.redundant[f])
                for f, (view, selection) in enumerate(zip(views, clip.selections))]))
            kept = sum(int(s.indices.numel()) for s in clip.selections)
            print(f"{name} ({mode}): kept {kept} of {len(frames)} x {vision.tower.num_patches}; "
                  f"redundant per frame {[int(r.sum()) for r in clip.redundant]}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    overlay.stacked(strips).save(args.out)
    print(f"wrote {args.out}")
    return 0
