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
    from ..bench.archs import ARCHITECTURES, HF_CHECKPOINTS, QWEN_CHECKPOINTS, VIDEO_CHECKPOINTS
    from ..bench.host import BACKENDS

    parser.add_argument("--backend", default="upstream",
                        help=f"the host classes to time: {' or '.join(BACKENDS)} (upstream llava's LlavaLlamaForCausalLM; "
                             "transformers' LlavaForConditionalGeneration / LlavaNextForConditionalGeneration); "
                             "default: upstream")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a LLaVA checkpoint directory (upstream: loaded with load_pretrained_model; "
                                        "transformers: with from_pretrained and its processor)")
    source.add_argument("--random-weights", metavar="NAME",
                        help="build this architecture from its published config with random weights (no download); "
                             f"upstream: {', '.join(ARCHITECTURES)}; transformers: {', '.join(HF_CHECKPOINTS)}; "
                             f"transformers Qwen-VL (one 448 / 512 px picture, 256 merged tokens): "
                             f"{', '.join(QWEN_CHECKPOINTS)}; "
                             f"transformers video (with --video): {', '.join(VIDEO_CHECKPOINTS)}")
    parser.add_argument("--llm-layers", type=int, help="decoder layers to build (random weights only; default: all)")
    parser.add_argument("--vision-layers", type=int, help="vision encoder layers to build (random weights only; default: all)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to compare with the oracle, or 'all' (every registered "
                             "method, the LLM-side ones and 'none', the unpatched model); default: every registered "
                             "vision method that needs no instruction text")
    parser.add_argument("--ratios", default="1.0,0.5,0.25", help="fractions of visual tokens kept (default: 1.0,0.5,0.25)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per row, in shuffled round-robin rounds over the rows; medians and "
                             "quartiles are reported (default: 10 on cuda, 3 on cpu; fewer than 10 on cuda is warned about)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs of every row before the first round (default: 3 on cuda, 1 on cpu; "
                             "fewer than 3 on cuda is warned about)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per run (all of them: EOS is suppressed)")
    parser.add_argument("--text-tokens", type=int, default=40, help="prompt length besides the image (random weights only)")
    parser.add_argument("--batch-size", default="1",
                        help="prompts per generate call, or a comma-separated list, e.g. 1,8,32: rows per batch size "
                             "(default: 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on cuda, float32 on cpu)")
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="wall time (default), or the CPU time of the main thread (CPU, --threads 1: "
                             "for shared machines where wall time mostly measures other processes)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--capture-memory", action="store_true",
                        help="also measure the attention capture's peak memory at 576 and 2304 patches")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing row with its error and go on with the others")
    parser.add_argument("--quant", default="none",
                        help="comma-separated weight quantizations, each a separate model: none, 8bit (LLM.int8), "
                             "4bit (NF4), bitsandbytes as upstream's load_8bit / load_4bit (language model and "
                             "projector; the vision tower stays unquantized); default: none")
    parser.add_argument("--video", type=int, metavar="FRAMES",
                        help="time a clip of FRAMES frames instead of a picture (--backend transformers, a video "
                             f"model: {', '.join(VIDEO_CHECKPOINTS)}); rows per --video-modes")
    parser.add_argument("--video-modes",
                        help="with --video: comma-separated FREEPRUNER_VIDEO modes, a row each (default: frame,temporal)")
    parser.add_argument("--count-ops", action="store_true",
                        help="instead of timing, count the plugin's aten ops and host syncs per generate() in each "
                             "phase (tower, between tower and LLM, prefill, per decode step) with a dispatch-mode "
                             "counter; default --dtype float16 on any device; writes op_counts.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results", help="output directory (default: bench_results)")


def _video_modes(args):
    """The video modes of the rows ([] without --video), refused by name when --video cannot apply."""
    from ..bench.archs import VIDEO_CHECKPOINTS

    is_video = args.random_weights in VIDEO_CHECKPOINTS
    if args.video is None:
        if args.video_modes is not None:
            raise ValueError("--video-modes applies to video rows only: give --video FRAMES")
        if is_video:
            raise ValueError(f"--random-weights {args.random_weights} is a video model: give --video FRAMES")
        return []
    if args.backend != "transformers":
        raise ValueError("--video needs --backend transformers (upstream llava has no video models)")
    if not is_video:
        raise ValueError(f"--video FRAMES goes with a random-weights video model: expected --random-weights "
                         f"one of {', '.join(VIDEO_CHECKPOINTS)}")
    if args.video < 1:
        raise ValueError(f"--video {args.video} is not valid: expected a number of frames >= 1")
    return [mode.strip() for mode in (args.video_modes or "frame,temporal").split(",") if mode.strip()]


def _batch_sizes(text: str):
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(size < 1 for size in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"--batch-size {text!r} is not valid: expected a number >= 1 or a comma-separated "
                         "list of different ones, e.g. 1,8,32")
    return sizes


def _check_count_flags(args) -> None:
    """Refuse the timing-only options in --count-ops mode."""
    for flag, given in (("--video", args.video is not None), ("--quant", args.quant != "none"),
                        ("--capture-memory", args.capture_memory), ("--clock", args.clock != "wall")):
        if given:
            raise ValueError(f"{flag} applies to timing runs, not to --count-ops")


def _build(args, bench_model, device: str, dtype, quant: str):
    """The model under test: the --model checkpoint or the --random-weights architecture."""
    from ..bench import quant as bench_quant

    if args.model:
        return (bench_model.load_checkpoint(args.model, device, dtype, quant) if args.backend == "upstream"
                else bench_model.load_checkpoint(args.model, device, dtype))
    bench = bench_model.build_random(args.random_weights, args.llm_layers, args.vision_layers, device, dtype, args.seed)
    bench_quant.quantize_random(bench.model, quant)
    return bench


def _model_meta(args, bench, device: str, dtype) -> dict:
    import torch

    parts = bench.parts
    return {
        "command": command_line(args),
        "model": args.model or args.random_weights,
        "weights": "checkpoint" if args.model else "random",
        "backend": args.backend,
        "llm_layers": parts.text_config.num_hidden_layers,
        "vision_layers": parts.vision_config.num_hidden_layers,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "dtype": str(dtype).replace("torch.", ""),
        "llm_attention": bench.model.config._attn_implementation,
        "torch": torch.__version__,
    }


def _count_ops(args, bench_model, device: str, dtype, settings, batch_sizes, log, fail) -> int:
    """``--count-ops``: a row per method, ratio and batch size; op_counts.json and .md under --out."""
    from ..bench import count
    from ..bench.runner import check_methods

    log(f"bench: building {args.model or args.random_weights} ({args.backend}) on {device} ({dtype}) to count ops")
    try:
        bench = _build(args, bench_model, device, dtype, "none")
        check_methods(bench, settings.methods, settings.ratios)
        inputs = {size: bench_model.make_inputs(bench, size, args.text_tokens) for size in batch_sizes}
    except ValueError as err:
        return fail(str(err))
    records = count.count_rows(bench, inputs, settings.methods, settings.ratios, settings.new_tokens, settings.seed, log,
                               settings.keep_going)
    meta = {**_model_meta(args, bench, device, dtype), "batch_sizes": batch_sizes,
            "text_tokens": next(iter(inputs.values())).text_tokens, "new_tokens": settings.new_tokens,
            "phases": list(count.PHASES)}
    os.makedirs(args.out, exist_ok=True)
    table = count.markdown(meta, records)
    for name, text in (("op_counts.json", json.dumps({"meta": meta, "records": records}, indent=1)),
                       ("op_counts.md", table + "\n")):
        path = os.path.join(args.out, name)
        with open(path, "w") as handle:
            handle.write(text)
        log(f"bench: wrote {path}")
    print(table)
    return 0


def command_line(args, command: str = "bench") -> str:
    """The command that reproduces this run (options spelled out, defaults included)."""
    words = ["python", "-m", "llava_freepruner", command]
    for key, value in vars(args).items():
        if value is None or value is False:
            continue
        option = "--" + key.replace("_", "-")
        if value is True:
            words.append(option)
        elif isinstance(value, list):       # an option given once per item
            for item in value:
                words += [option, shlex.quote(str(item))]
        else:
            words += [option, shlex.quote(str(value))]
    return " ".join(words)


def run(args) -> int:
    import torch

    from ..bench import capture_memory, host, quant as bench_quant, report
    from ..bench.model import parse_dtype
    from ..bench.runner import Bench, Settings, known_methods, resolve_rounds
    from ...runtime.methods import REGISTRY

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
    # Text-conditioned methods need a prompt's instruction and a CLIP text tower: only on request.
    vision_methods = [m for m in sorted(REGISTRY) if not REGISTRY[m].needs_instruction]
    if args.methods is None:
        methods = vision_methods
    elif args.methods.strip() == "all":
        methods = [m for m in known_methods() if m not in REGISTRY or not REGISTRY[m].needs_instruction]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    log = lambda text: print(text, file=sys.stderr, flush=True)
    try:
        batch_sizes = _batch_sizes(args.batch_size)
        if args.count_ops:
            _check_count_flags(args)
        video_modes = _video_modes(args)
        quants = bench_quant.parse(args.quant, bool(args.model), device)
        bench_model = host.builder(args.backend)
        dtype = parse_dtype(args.dtype or ("float16" if device == "cuda" or args.count_ops else "float32"))
        warmup, repeats, round_warnings = resolve_rounds(device, args.warmup, args.repeats)
        args.warmup, args.repeats = warmup, repeats        # the command line in the results spells them out
        settings = Settings(methods, _floats(args.ratios), repeats, warmup, args.new_tokens, args.seed,
                            args.clock, args.keep_going, video_modes)
        if args.model and args.backend != "upstream" and quants != [bench_quant.NONE]:
            raise ValueError("--quant with a --model checkpoint needs --backend upstream (its loader quantizes); "
                             "random weights are quantized on either backend")
    except ValueError as err:
        return fail(str(err))
    if args.count_ops:
        return _count_ops(args, bench_model, device, dtype, settings, batch_sizes, log, fail)
    for warning in round_warnings:
        log(f"bench: warning: {warning}")
    records = []
    for quant in quants:
        try:
            log(f"bench: building {args.model or args.random_weights} ({args.backend}) on {device} "
                f"({dtype}, weights {quant})")
            bench = _build(args, bench_model, device, dtype, quant)
            video = (args.video,) if args.backend == "transformers" else ()
            inputs = {size: bench_model.make_inputs(bench, size, args.text_tokens, *video) for size in batch_sizes}
            runner = Bench(bench, inputs, settings, args.out, log)
        except ValueError as err:
            return fail(str(err))
        os.makedirs(args.out, exist_ok=True)
        try:
            records += bench_quant.tag(runner.run(), quant, bench.model)
        except BaseException:
            finished = records + bench_quant.tag(runner.records, quant, bench.model)
            if finished:      # keep the rows that finished
                path = os.path.join(args.out, "results.partial.json")
                with open(path, "w") as handle:
                    json.dump(finished, handle, indent=1)
                log(f"bench: stopped early; the {len(finished)} finished rows are in {path}")
            raise
        if quant != quants[-1]:
            del bench, inputs, runner
            bench_quant.release(device)
    capture = None
    parts = bench.parts
    if args.capture_memory:
        from ...runtime.tower import feature_layer

        cfg = parts.vision_config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        layer = feature_layer(cfg.num_hidden_layers, parts.feature_layer)
        capture = []
        for method in [m for m in methods if m in vision_methods]:
            capture += capture_memory.measure(method, [576, 2304], cfg.num_attention_heads, head_dim,
                                              cfg.num_hidden_layers, layer)
    meta = {
        **_model_meta(args, bench, device, dtype),
        "threads": torch.get_num_threads(),
        "batch_sizes": batch_sizes, "text_tokens": inputs[batch_sizes[0]].text_tokens, "video_frames": args.video,
        "new_tokens": args.new_tokens, "clock": runner.clock_name, "repeats": settings.repeats, "warmup": settings.warmup,
        "warnings": round_warnings,
        "quant": quants, **bench_quant.versions(quants),
    }
    for path in report.write(args.out, meta, records, capture):
        log(f"bench: wrote {path}")
    print(report.markdown(meta, records, capture))
    return 0
