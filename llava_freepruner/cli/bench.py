"""``python -m llava_freepruner bench``: time, FLOPs and memory per method and ratio."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys


def _floats(text: str):
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--ratios {text!r} is not valid: expected comma-separated fractions, e.g. 1.0,0.5,0.25")


def add_arguments(parser) -> None:
    from ..bench.archs import ARCHITECTURES

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a LLaVA checkpoint directory (loaded with upstream load_pretrained_model)")
    source.add_argument("--random-weights", choices=sorted(ARCHITECTURES),
                        help="build this architecture from its published config with random weights (no download)")
    parser.add_argument("--llm-layers", type=int, help="decoder layers to build (random weights only; default: all)")
    parser.add_argument("--vision-layers", type=int, help="vision encoder layers to build (random weights only; default: all)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to compare with the oracle (default: every registered vision method)")
    parser.add_argument("--ratios", default="1.0,0.5,0.25", help="fractions of visual tokens kept (default: 1.0,0.5,0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; medians are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per run (all of them: EOS is suppressed)")
    parser.add_argument("--text-tokens", type=int, default=40, help="prompt length besides the image (random weights only)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="wall time (default), or the CPU time of the main thread (CPU, --threads 1: "
                             "for shared machines where wall time mostly measures other processes)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--capture-memory", action="store_true",
                        help="also measure the attention capture's peak memory at 576 and 2304 patches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results", help="output directory (default: bench_results)")


def command_line(args, command: str = "bench") -> str:
    """The command that reproduces this run (options spelled out, defaults included)."""
    words = ["python", "-m", "llava_freepruner", command]
    for key, value in vars(args).items():
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(shlex.quote(str(value)))
    return " ".join(words)


def run(args) -> int:
    import torch

    from ..bench import capture_memory, model as bench_model, report
    from ..bench.runner import Bench, Settings, known_methods

    def fail(message: str) -> int:
        print(f"llava_freepruner bench: {message}", file=sys.stderr)
        return 2

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        return fail(f"--device {device!r} is not valid: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda was asked for but torch sees no CUDA device")
    if args.model and (args.llm_layers or args.vision_layers):
        return fail("--llm-layers and --vision-layers apply to --random-weights only")
    if args.threads is not None:
        if args.threads < 1:
            return fail(f"--threads {args.threads} is not valid: expected >= 1")
        torch.set_num_threads(args.threads)
    vision_methods = [m for m in known_methods() if m not in ("fastv",)]
    methods = vision_methods if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        dtype = bench_model.parse_dtype(args.dtype or ("float16" if device == "cuda" else "float32"))
        settings = Settings(methods, _floats(args.ratios), args.repeats, args.warmup, args.new_tokens, args.seed, args.clock)
        log = lambda text: print(text, file=sys.stderr, flush=True)
        log(f"bench: building {args.model or args.random_weights} on {device} ({dtype})")
        if args.model:
            bench = bench_model.load_checkpoint(args.model, device, dtype)
        else:
            bench = bench_model.build_random(args.random_weights, args.llm_layers, args.vision_layers, device, dtype, args.seed)
        inputs = bench_model.make_inputs(bench, args.batch_size, args.text_tokens)
    except ValueError as err:
        return fail(str(err))
    os.makedirs(args.out, exist_ok=True)
    try:
        runner = Bench(bench, inputs, settings, args.out, log)
    except ValueError as err:
        return fail(str(err))
    try:
        records = runner.run()
    except BaseException:
        if runner.records:      # keep the rows that finished
            path = os.path.join(args.out, "results.partial.json")
            with open(path, "w") as handle:
                json.dump(runner.records, handle, indent=1)
            log(f"bench: stopped early; the {len(runner.records)} finished rows are in {path}")
        raise
    capture = None
    if args.capture_memory:
        tower = bench.model.get_vision_tower()
        from ..tower import feature_layer

        cfg = tower.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        layer = feature_layer(cfg.num_hidden_layers, tower.select_layer)
        capture = []
        for method in [m for m in methods if m in vision_methods]:
            capture += capture_memory.measure(method, [576, 2304], cfg.num_attention_heads, head_dim,
                                              cfg.num_hidden_layers, layer)
    meta = {
        "command": command_line(args),
        "model": args.model or args.random_weights,
        "weights": "checkpoint" if args.model else "random",
        "llm_layers": bench.model.config.num_hidden_layers,
        "vision_layers": bench.model.get_vision_tower().config.num_hidden_layers,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "text_tokens": inputs.text_tokens, "new_tokens": args.new_tokens,
        "clock": args.clock, "repeats": args.repeats, "warmup": args.warmup, "torch": torch.__version__,
    }
    for path in report.write(args.out, meta, records, capture):
        log(f"bench: wrote {path}")
    print(report.markdown(meta, records, capture))
    return 0
