"""``python -m llava_freepruner visualize``: which patches each method keeps on one photo."""

from __future__ import annotations

import os
import sys

HELP = "draw the tokens each selection method keeps on a photo (pivotal, complementary, dropped)"


def add_arguments(parser) -> None:
    from ..vision import arguments

    parser.add_argument("--image", required=True, help="the photo to draw on")
    parser.add_argument("--ratio", type=arguments.fraction, default=0.5, help="fraction of patch tokens kept (default 0.5)")
    parser.add_argument("--method", type=arguments.names, default=["freepruner"],
                        help="method name, or several separated by commas (one panel each); default freepruner")
    arguments.add_vision_source(parser)
    parser.add_argument("--out", required=True, help="the PNG file to write")


def run(args) -> int:
    from .. import config as config_module
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
