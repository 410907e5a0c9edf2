"""The `kinetoscope` command: parses arguments and calls the API. No logic lives here."""

from __future__ import annotations

import argparse
import os
import sys

from kinetoscope.errors import UserError
from kinetoscope.video import frames_for

EXIT_USAGE = 2


def parse_size(text: str) -> tuple[int, int]:
    """Returns (width, height) from 'WxH'."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 64x64, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


# Shared options: one spelling everywhere, added by name to each subcommand that takes them.
def _opt(p: argparse.ArgumentParser, *names: str) -> None:
    spec = {
        "out": dict(flags=["--out", "-o"], help="output file (.mp4, .webm, .gif, .png, .jpg)"),
        "seed": dict(flags=["--seed"], type=int, default=0, help="random seed (default 0)"),
        "size": dict(flags=["--size"], type=parse_size, help="frame size WxH, e.g. 64x64"),
        "seconds": dict(flags=["--seconds"], type=float, help="duration in seconds"),
        "frames": dict(flags=["--frames"], type=int, help="number of frames (overrides --seconds)"),
        "fps": dict(flags=["--fps"], type=float, help="frames per second"),
        "steps": dict(flags=["--steps"], type=int, help="sampling steps"),
        "guidance": dict(flags=["--guidance"], type=float, help="classifier-free guidance scale"),
        "model": dict(
            flags=["--model"],
            default="shapeworld-tiny",
            help="'shapeworld-tiny' (bundled), a trained folder, or a Wan2.1 folder",
        ),
        "device": dict(flags=["--device"], default=None, help="cpu, cuda, cuda:1 (default: best)"),
        "compile": dict(
            flags=["--compile"],
            action="store_true",
            help="torch.compile the DiT's blocks: a slower first step, faster later ones (for "
            "large models on a GPU; docs/wan.md)",
        ),
        "keyframe": dict(
            flags=["--keyframe"],
            action=argparse.BooleanOptionalAction,
            help="text to video: make frame 0 first, as an image, then the video from it "
            "(default: the model's)",
        ),
        "guide_frames": dict(
            flags=["--guide-frames"],
            action=argparse.BooleanOptionalAction,
            help="guidance strengthens the frames a video continues from, as it does the text "
            "(windows with 2+ known latent frames; default: the model's)",
        ),
    }
    for name in names:
        s = dict(spec[name])
        p.add_argument(*s.pop("flags"), **s)


GEN = ("out", "seed", "size", "seconds", "frames", "fps", "steps", "guidance", "model", "device",
       "compile")  # fmt: skip


def _pipeline(args: argparse.Namespace):
    """Returns the pipeline of --model on --device, with --keyframe / --guide-frames applied
    when given, its DiT's blocks compiled with --compile."""
    from dataclasses import replace

    from kinetoscope.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    if getattr(args, "keyframe", None) is not None:
        pipe.defaults = replace(pipe.defaults, keyframe=args.keyframe)
    if getattr(args, "guide_frames", None) is not None:
        pipe.defaults = replace(pipe.defaults, guide_frames=args.guide_frames)
    if getattr(args, "compile", False):
        pipe.dit.compile_blocks()
    return pipe


def cmd_info(args: argparse.Namespace) -> int:
    from kinetoscope.video import probe

    info = probe(args.file)
    for key, value in info.items():
        print(f"{key:>9}: {value}")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    from kinetoscope.prompts.expand import expand

    kw = dict(url=args.expander_url, model=args.expander_model, timeout=args.expander_timeout)
    print(expand(args.prompt, seed=args.seed, expander=args.expander, **kw))
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    import json

    from kinetoscope.prompts.caption import caption_files

    lines = [json.dumps(line) for line in caption_files(args.videos)]
    if args.out:
        with open(args.out, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        print(f"kinetoscope caption: wrote {len(lines)} captions to {args.out}")
    else:
        print("\n".join(lines))
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    import json

    from kinetoscope.video import Video
    from kinetoscope.world.judge import score

    result = score(Video.read(args.video), args.prompt)
    if "judged" in result:
        result["judged"] = result["judged"].to_dict()
    print(json.dumps(result, indent=2))
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kinetoscope.prompts.caption import write_world_samples

    if not args.out:
        raise UserError("world sample needs --out DIR")
    (w, h), fps = args.size or (64, 64), args.fps or 8.0
    frames = args.frames or frames_for(args.seconds or 4.0, fps)
    bar = lambda it: tqdm(it, desc="world sample", unit="clip")
    manifest = write_world_samples(
        args.out, args.count, w, h, frames, fps, args.seed, args.heldout, progress=bar
    )
    print(f"kinetoscope world: wrote {args.count} clips of {w}x{h}x{frames}; captions: {manifest}")
    return 0


# ---- the capabilities: generate, image, animate, extend, connect, edit, loop ----
# Arguments and input files are checked before the model loads, so bad input fails at once;
# every output is written atomically, so a failure leaves no partial file.


def _out(args: argparse.Namespace, default: str, image: bool = False):
    from pathlib import Path

    from kinetoscope.video import IMAGE_EXTS, SAVE_EXTS

    out = Path(args.out or default)
    ext = out.suffix.lower()
    if ext not in SAVE_EXTS:
        raise UserError(f"--out {out}: unsupported extension {ext!r}; use {', '.join(SAVE_EXTS)}")
    if ext in IMAGE_EXTS and not image:
        raise UserError(f"--out {out}: a video needs .mp4, .webm or .gif")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder")
    return out


def _check_args(args: argparse.Namespace) -> None:
    from kinetoscope.pipeline import check_seconds

    for name in ("seconds", "transition"):
        if getattr(args, name, None) is not None:
            check_seconds(getattr(args, name), f"--{name}")
    for name in ("frames", "steps"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if getattr(args, "fps", None) is not None and not 0 < args.fps <= 240:
        raise UserError(f"--fps must be in (0, 240], got {args.fps}")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise UserError(f"--strength must be in [0, 1], got {strength}")


def _run_capability(args: argparse.Namespace, make, default_out: str, image: bool = False):
    """Checks arguments, reads inputs, loads the model, runs `make(pipe, inputs)`, saves."""
    import warnings

    from kinetoscope.pipeline import Notice
    from kinetoscope.video import Video

    out = _out(args, default_out, image)
    _check_args(args)
    inputs = [Video.read(getattr(args, k)) for k in ("image", "video", "video_a", "video_b")
              if getattr(args, k, None)]  # fmt: skip
    pipe = _pipeline(args)
    with warnings.catch_warnings():
        warnings.simplefilter("always", Notice)
        show = warnings.showwarning

        def note(message, category, *rest, **kw):
            if issubclass(category, Notice):
                print(f"kinetoscope {args.command}: note: {message}", file=sys.stderr)
            else:
                show(message, category, *rest, **kw)

        warnings.showwarning = note
        kw = dict(steps=args.steps, guidance=args.guidance, seed=args.seed,
                  expand=not args.no_expand)  # fmt: skip
        result = make(pipe, inputs, kw)
        if result.metadata.get("expanded_prompt") is not None and not args.no_expand:
            print(f"prompt: {result.metadata['expanded_prompt']}")
        result.save(out)
    n = result.num_frames
    what = "1 frame" if n == 1 else f"{n} frames at {result.fps:g} fps"
    print(f"kinetoscope {args.command}: wrote {out} ({result.width}x{result.height}, {what})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):  # a Stream: long videos go to the file as windows finish
        return pipe.generate_stream(args.prompt, seconds=args.seconds, frames=args.frames,
                                    size=args.size, fps=args.fps, **kw)  # fmt: skip

    return _run_capability(args, make, "out.mp4")


def cmd_image(args: argparse.Namespace) -> int:
    return _run_capability(
        args, lambda pipe, _, kw: pipe.image(args.prompt, size=args.size, **kw), "out.png", True
    )


def cmd_animate(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):
        return pipe.animate(inputs[0], args.prompt, seconds=args.seconds, frames=args.frames,
                            size=args.size, fps=args.fps, **kw)  # fmt: skip

    return _run_capability(args, make, "out.mp4")


def cmd_extend(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):
        return pipe.extend(inputs[0], args.prompt, seconds=args.seconds,
                           direction=args.direction, size=args.size, **kw)  # fmt: skip

    return _run_capability(args, make, "out.mp4")


def cmd_connect(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):
        return pipe.connect(*inputs, args.prompt, seconds=args.seconds, size=args.size, **kw)

    return _run_capability(args, make, "out.mp4")


def cmd_edit(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):
        return pipe.edit(inputs[0], args.prompt, strength=args.strength, size=args.size,
                         invert=args.invert, **kw)  # fmt: skip

    return _run_capability(args, make, "out.mp4")


def cmd_loop(args: argparse.Namespace) -> int:
    def make(pipe, inputs, kw):
        video = inputs[0] if inputs else None
        return pipe.loop(args.prompt, video=video, seconds=args.seconds,
                         transition=args.transition, size=args.size, **kw)  # fmt: skip

    return _run_capability(args, make, "out.mp4")


def cmd_train(args: argparse.Namespace) -> int:
    from kinetoscope.train.config import load_config
    from kinetoscope.train.trainer import train

    cfg = load_config(args.config, args.overrides)  # every key checked before any work
    run = train(cfg, resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not one per torchrun rank
        print(f"kinetoscope train: done; checkpoints and metrics in {run}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from kinetoscope.train.config import load_config
    from kinetoscope.train.trainer import build_cache

    cfg = load_config(args.config, args.overrides)
    out = build_cache(cfg, args.samples, device=args.device)
    print(f"kinetoscope cache: wrote {args.samples} latents to {out}")
    return 0


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def cmd_convert(args: argparse.Namespace) -> int:
    from kinetoscope.interop.wan import convert_folder

    dtype = {"float32": None, "bfloat16": torch_dtype("bfloat16")}[args.dtype]
    out = convert_folder(args.src, args.out, args.format, dtype, args.name, args.vae)
    print(f"kinetoscope convert: wrote {out} ({args.format} format)")
    return 0


def _check_json(path) -> None:
    """Raises UserError at once if the --json file could not be written after a long run."""
    from pathlib import Path

    if path and not Path(path).resolve().parent.is_dir():
        raise UserError(f"--json {path}: folder {Path(path).parent} does not exist")


def _write_json(path, result: dict) -> None:
    import json

    try:
        with open(path, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"--json {path}: {e.strerror}") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from kinetoscope import evaluate
    from kinetoscope.pretrained import load_vae_run

    _check_args(args)
    _check_json(args.json)
    evaluate.check_count(args.count)
    if args.what == "adherence":
        from kinetoscope.prompts.caption import load_prompts

        prompts = load_prompts(args.prompts)
        if not prompts:
            raise UserError(f"--prompts {args.prompts}: no prompts in it")
        evaluate.check_count(args.count, len(prompts))
    if args.what == "vae" and (run := load_vae_run(args.model, args.device)) is not None:
        vae, name = run  # a VAE training run: measured on its own, at the training size
        result = evaluate.eval_vae(vae, args.count or 64, args.seed)
        result["model"] = name
        return _print_result(evaluate.vae_table(result), result, args.json)
    pipe = _pipeline(args)
    if args.what == "adherence":
        result = evaluate.eval_adherence(pipe, prompts, expand=not args.no_expand,
                                         seed=args.seed, steps=args.steps,
                                         guidance=args.guidance, count=args.count)  # fmt: skip
        result["prompts"] = args.prompts
        table = evaluate.adherence_table(result)
    else:
        d = pipe.defaults
        result = evaluate.eval_vae(pipe.vae, args.count or 64, args.seed, d.width, d.height,
                                   dtype=pipe.dtype)  # fmt: skip
        result["model"] = pipe.name
        table = evaluate.vae_table(result)
    return _print_result(table, result, args.json)


def _print_result(table: str, result: dict, json_path) -> int:
    import json

    print(table)
    if json_path:
        _write_json(json_path, result)
        print(f"kinetoscope eval: wrote {json_path}")
    else:  # the summary; per-prompt scores only go to --json
        print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from kinetoscope import bench

    _check_args(args)
    _check_json(args.json)
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    if args.what == "render":
        (w, h), fps = args.size or (64, 64), args.fps or 8.0
        frames = args.frames or frames_for(args.seconds or 4.0, fps)
        result = bench.bench_render(w, h, frames, fps, args.repeat, args.seed)
        print(f"render {w}x{h}, {frames} frames: median {result['median']:.3f} s per clip "
              f"over {args.repeat} scenes after 1 warm-up")  # fmt: skip
        print(bench.machine_line(result["machine"]))
    else:
        out = _out(args, "") if args.out else None
        pipe = _pipeline(args)
        result = bench.bench_generate(
            pipe, args.prompt, args.seconds, args.frames, args.size, args.steps, args.guidance,
            args.fps, args.seed, not args.no_expand, args.repeat,
        )  # fmt: skip
        video = result.pop("last_video")
        print(bench.generate_table(result))
        if out:
            video.save(out)
    if args.json:
        _write_json(args.json, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinetoscope", description="Open Sora-style text-to-video generation and training."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, run, *opts: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _opt(p, *opts)
        p.set_defaults(run=run)
        return p

    no_expand = dict(action="store_true", help="give the model the prompt as written")
    p = add("generate", "generate a video from a text prompt", cmd_generate, *GEN, "keyframe",
            "guide_frames")  # fmt: skip
    p.add_argument("prompt")
    p.add_argument("--no-expand", **no_expand)
    p = add("image", "generate a single image from a text prompt", cmd_image, *GEN)
    p.add_argument("prompt")
    p.add_argument("--no-expand", **no_expand)
    p = add("animate", "animate an image into a video", cmd_animate, *GEN)
    p.add_argument("image")
    p.add_argument("prompt")
    p.add_argument("--no-expand", **no_expand)
    p = add("extend", "extend a video forward or backward in time", cmd_extend, *GEN,
            "guide_frames")  # fmt: skip
    p.add_argument("video")
    p.add_argument("prompt")
    p.add_argument("--direction", choices=["forward", "backward"], default="forward")
    p.add_argument("--no-expand", **no_expand)
    p = add("connect", "generate a transition joining two videos", cmd_connect, *GEN,
            "guide_frames")  # fmt: skip
    p.add_argument("video_a")
    p.add_argument("video_b")
    p.add_argument("prompt")
    p.add_argument("--no-expand", **no_expand)
    p = add("edit", "edit a video with a new prompt (SDEdit)", cmd_edit, *GEN)
    p.add_argument("video")
    p.add_argument("prompt")
    p.add_argument("--strength", type=float, default=0.6,
                   help="0 keeps the input, 1 regenerates it (without --invert)")  # fmt: skip
    p.add_argument("--invert", action="store_true",
                   help="start from the input's own noise (its inversion), not random noise: "
                   "keeps more motion and layout; the seed then only picks the prompt's "
                   "expansion")  # fmt: skip
    p.add_argument("--no-expand", **no_expand)
    p = add("loop", "make a video whose end flows into its start", cmd_loop, *GEN, "keyframe",
            "guide_frames")  # fmt: skip
    p.add_argument("prompt")
    p.add_argument("--video", help="loop this video (default: generate --seconds of video)")
    p.add_argument("--transition", type=float, help="seconds of the transition (default 2)")
    p.add_argument("--no-expand", **no_expand)
    p = add("expand", "expand a short prompt into a detailed caption", cmd_expand, "seed")
    p.add_argument("prompt")
    p.add_argument("--expander", choices=["rule", "openai"], default="rule")
    p.add_argument("--expander-url", help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    p.add_argument("--expander-model", help="chat model name (default gpt-4o-mini)")
    p.add_argument("--expander-timeout", type=float, default=20.0, help="seconds (default 20)")
    p = add("caption", "write detailed captions for videos", cmd_caption, "out")
    p.add_argument("videos", nargs="+")
    p = add("judge", "read a video back into a scene and score it against a prompt", cmd_judge)
    p.add_argument("video")
    p.add_argument("prompt")
    p = add(
        "world",
        "render ShapeWorld clips with captions",
        cmd_world,
        "out",
        "seed",
        "size",
        "seconds",
        "frames",
        "fps",
    )
    p.add_argument("action", choices=["sample"])
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--heldout", action="store_true", help="only held-out combinations (eval)")
    p = add("train", "train a VAE or a DiT from a yaml recipe", cmd_train, "device")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p = add("cache", "encode a dit recipe's data once into its latent cache", cmd_cache, "device")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.latent_cache=DIR")
    p.add_argument("--samples", type=int, default=4096, help="clips and images to encode")
    p = add("eval", "measure a model (adherence, reconstruction)", cmd_eval,
            "model", "device", "seed", "steps", "guidance", "keyframe")  # fmt: skip
    p.add_argument("what", choices=["adherence", "vae"],
                   help="vae also takes a VAE training run as --model")  # fmt: skip
    p.add_argument("--prompts", default="heldout", help="heldout, short, or a file, one a line")
    p.add_argument("--count", type=int, help="first N prompts (default all) / clips (64)")
    p.add_argument("--no-expand", **no_expand)
    p.add_argument("--json", help="write the full results, per prompt: scores, scene judged")
    p = add("bench", "time a job on this machine", cmd_bench, *GEN, "keyframe", "guide_frames")
    p.add_argument("what", choices=["generate", "render"])
    p.add_argument("--repeat", type=int, default=3, help="timed runs after 1 warm-up (default 3)")
    p.add_argument("--prompt", default="a red ball bouncing in the snow", help="prompt timed")
    p.add_argument("--no-expand", **no_expand)
    p.add_argument("--json", help="write every run's timings and the machine to this JSON file")
    p = add("convert", "write a training run or a Wan2.1 folder as a pipeline folder", cmd_convert)
    p.add_argument("src", help="a dit training run, a pipeline folder, or a Wan2.1 folder")
    p.add_argument("--out", "-o", required=True, help="new folder to write")
    p.add_argument("--format", choices=["kinetoscope", "diffusers"], default="kinetoscope")
    p.add_argument("--name", help="the model's name in its config.json (default: the source's)")
    p.add_argument(
        "--vae",
        help="a VAE run or folder whose decoder replaces the source's (its encoder must be the "
        "source's: trained from it with model.freeze_encoder=true)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="store weight matrices and kernels as bfloat16 (half the size; kinetoscope format)",
    )
    p = add("info", "print frames, size, fps, duration, codec (and the prompt of a generated "
            "video: title, expanded: comment) of a video or image", cmd_info)  # fmt: skip
    p.add_argument("file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train CONFIG --resume a.b=c`: overrides may come after options, which argparse's
    # positional list cannot take; anything else left over is an error as usual.
    if args.command in ("train", "cache") and all(
        "=" in e and not e.startswith("-") for e in extra
    ):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = args.run(args)
    except UserError as e:
        print(f"kinetoscope {args.command}: error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print(f"kinetoscope {args.command}: interrupted", file=sys.stderr)
        code = 130
    if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun rank leaves without interpreter shutdown: FSDP keeps references to the
        # process group, so gloo's threads outlive destroy_process_group, and tearing them
        # down at exit aborted 1 run in 16-60 ("terminate called without an active
        # exception"), turning a finished run into a failure. Every file is written by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
