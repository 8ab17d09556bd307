"""Command line of fla_loglinear.

  python -m fla_loglinear demo    train stock and log-linear Gated DeltaNet / Mamba-2 on MQAR (CPU is enough)
  python -m fla_loglinear mqar    MQAR sweep: log-linear vs linear parent over widths, lrs, seeds, lambda forms (GPU)
  python -m fla_loglinear bench   kernel benchmarks plus model-level throughput and decoding (needs a GPU)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

# Heavy imports (fla, transformers, the demo) stay inside the commands so that `--help` and most flag errors are instant.


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (try 'cpu' or 'cuda')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} asked for, but torch sees no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported (use 'cpu' or 'cuda')")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fla-loglinear", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,mqar,bench}")

    demo = sub.add_parser(
        "demo",
        help="train tiny stock and log-linear models on multi-query associative recall and compare them",
        description="Train small stock and log-linear versions of fla's Gated DeltaNet and Mamba-2 on a synthetic "
        "multi-query associative recall task, then report loss, held-out recall accuracy and one generate() call. "
        "Defaults depend on the device: a few minutes on a 2-core CPU, larger settings on a GPU.",
    )
    demo.add_argument("--model", choices=["gdn", "mamba2", "all"], default="all", help="model family (default: all)")
    demo.add_argument("--seq-len", type=_positive_int, default=None, help="tokens per sequence (default: 32 CPU, 256 GPU)")
    demo.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps per model (default: 450 CPU, 1500 GPU)")
    demo.add_argument("--batch-size", type=_positive_int, default=None, help="sequences per step (default: 16 CPU, 64 GPU)")
    demo.add_argument("--kv-pairs", type=_positive_int, default=None, help="key-value pairs per sequence (default: 4 CPU, 32 GPU)")
    demo.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the batch order")
    demo.add_argument("--output", metavar="DIR", default=None, help="write results.json and loss_curves.png here")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")

    mqar = sub.add_parser(
        "mqar",
        help="Zoology-style MQAR sweep: log-linear vs linear parent over widths, learning rates, seeds, lambda forms",
        description="Train Gated DeltaNet and Mamba-2, log-linear and linear parent, on multi-query associative "
        "recall over a grid of widths, learning rates and seeds (plus the lambda forms at the smallest widths), "
        "in parallel worker processes on one device. Writes a JSON of every run (after each), a markdown table "
        "and a PNG beside it. Presets: full (the GPU sweep), cpu (the demo's task on a CPU), smoke (a GPU check of about a minute), cpu-tiny (tests).",
    )
    mqar.add_argument("--preset", choices=["full", "cpu", "smoke", "cpu-tiny"], default="full", help="(default: full)")
    mqar.add_argument("--output", metavar="FILE.json", default="mqar_sweep.json",
                      help="results JSON; the .md table and .png figure go beside it (default: mqar_sweep.json)")
    mqar.add_argument("--device", type=_device, default=None, help="cpu or cuda (default: cuda when available)")
    mqar.add_argument("--workers", type=_positive_int, default=1, help="worker processes on the device (default: 1)")
    mqar.add_argument("--shard", metavar="I/N", default=None, help="run only the I-th of N interleaved shards")
    mqar.add_argument("--deadline-s", type=_positive_int, default=None,
                      help="start no run that would end after this many seconds (it is recorded as skipped)")
    mqar.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps per run (preset's otherwise)")
    mqar.add_argument("--batch-size", type=_positive_int, default=None, help="sequences per step")
    mqar.add_argument("--seq-len", type=_positive_int, default=None, help="tokens per sequence")
    mqar.add_argument("--vocab-size", type=_positive_int, default=None, help="vocabulary (Zoology: 8192)")
    mqar.add_argument("--widths", default=None, help="comma-separated model widths")
    mqar.add_argument("--kv-pairs", default=None, help="comma-separated key-value pair counts")
    mqar.add_argument("--lrs", default=None, help="comma-separated learning rates")
    mqar.add_argument("--seeds", default=None, help="comma-separated seeds (the first everywhere, the rest at --seed-widths)")
    mqar.add_argument("--seed-widths", default=None, help="widths that get every seed")
    mqar.add_argument("--form-widths", default=None, help="widths of the lambda-form / init comparison")
    mqar.add_argument("--forms", default=None,
                      help="comma-separated variants of that comparison (of paper-random, lowrank, lowrank-random)")
    mqar.add_argument("--archs", default=None, help="comma-separated subset of gdn,mamba2")
    mqar.add_argument("--list", action="store_true", help="print the planned runs and a time estimate, run nothing")
    mqar.add_argument("--assume-ms", type=float, default=20.0,
                      help="ms per training step per process for --list's estimate (default: 20)")
    mqar.add_argument("--resume", metavar="JSON", default=None,
                      help="keep the finished runs of this earlier sweep JSON and run only the rest")
    mqar.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                      help="merge these sweep JSONs into --output (table and PNG too) instead of running")

    bench = sub.add_parser(
        "bench",
        help="benchmark kernels, training throughput and decoding (CUDA GPU only)",
        description="Run the pytest-benchmark kernel suites in benchmarks/, then measure training throughput of "
        "stock vs log-linear models at ~125M parameters and decoding time / state memory against the position. "
        "Writes JSON and PNG plots. Needs a CUDA GPU.",
    )
    bench.add_argument("--output", metavar="DIR", default="benchmarks/out", help="(default: benchmarks/out, git-ignored)")
    bench.add_argument(
        "--parts",
        default="kernels,train,decode",
        help="comma-separated subset of kernels,train,decode (default: all three)",
    )
    bench.add_argument("--seq-lens", default="2048,8192,32768", help="training sequence lengths (default: 2048,8192,32768)")
    bench.add_argument(
        "--positions", default="1024,16384,131072,1048576", help="decoding positions (default: 1024,16384,131072,1048576)"
    )
    bench.add_argument("--archs", default="gdn,mamba2", help="train part: comma-separated model families (default: both)")
    bench.add_argument("--compile", action="store_true",
                       help="train part: every block under torch.compile, as flame compiles (warm-up steps pay it)")
    bench.add_argument("--profile", action="store_true",
                       help="train part: also write a torch.profiler table of one log-linear Gated DeltaNet step "
                       "(middle sequence length) to the output folder")
    return parser


def _int_list(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{flag}: expected comma-separated positive integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return values


def _list(parser, flag: str, text: str | None, kind):
    if text is None:
        return None
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        parser.error(f"{flag}: expected comma-separated {kind.__name__} values, got {text!r}")
    if not values or min(values) <= 0:
        parser.error(f"{flag}: expected comma-separated positive {kind.__name__} values, got {text!r}")
    return values


def _names(parser: argparse.ArgumentParser, flag: str, text: str, allowed, what: str) -> tuple[str, ...]:
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = sorted(set(names) - set(allowed))
    if bad or not names:
        parser.error(f"{flag}: unknown {what} {bad or names}; choose from {', '.join(allowed)}")
    return names


def _archs(parser: argparse.ArgumentParser, text: str) -> tuple[str, ...]:
    return _names(parser, "--archs", text, ("gdn", "mamba2"), "model(s)")


def _mqar(parser: argparse.ArgumentParser, args) -> int:
    import fla_loglinear.mqar_sweep as sweep

    if args.merge:
        try:
            report = sweep.merge(args.merge)
        except (OSError, ValueError) as err:
            parser.error(f"--merge: {err}")
        sweep.finish(report, args.output)
        return 0
    archs = None if args.archs is None else _archs(parser, args.archs)
    seeds = None
    if args.seeds is not None:
        try:
            seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
        except ValueError:
            parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
        if not seeds or min(seeds) < 0:
            parser.error(f"--seeds: expected comma-separated integers >= 0, got {args.seeds!r}")
    forms = None if args.forms is None else _names(parser, "--forms", args.forms, sweep.FORM_VARIANTS, "variant(s)")
    grid = sweep.grid_with(
        sweep.PRESETS[args.preset], archs=archs, seeds=seeds, steps=args.steps, batch_size=args.batch_size,
        seq_len=args.seq_len, vocab_size=args.vocab_size,
        widths=_list(parser, "--widths", args.widths, int), kv_pairs=_list(parser, "--kv-pairs", args.kv_pairs, int),
        lrs=_list(parser, "--lrs", args.lrs, float), seed_widths=_list(parser, "--seed-widths", args.seed_widths, int),
        form_widths=_list(parser, "--form-widths", args.form_widths, int),
        form_variants=forms,
    )
    for kv in grid.kv_pairs:
        if grid.seq_len < 4 * kv:
            parser.error(f"--seq-len {grid.seq_len} is too short for {kv} key-value pairs (needs >= {4 * kv})")
        if kv > (grid.vocab_size - 1) // 2:
            parser.error(f"--kv-pairs {kv} exceeds the {(grid.vocab_size - 1) // 2} keys of vocabulary {grid.vocab_size}")
    runs = sweep.plan(grid)
    if args.shard is not None:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
            runs = sweep.shard(runs, index, count)
        except ValueError as err:
            parser.error(f"--shard: expected I/N with 1 <= I <= N, got {args.shard!r} ({err})")
    if args.list:
        for run in runs:
            print(run.key)
        est = sweep.estimate_seconds(runs, args.assume_ms, args.workers)
        print(f"{len(runs)} runs, {sum(r.steps for r in runs)} steps: ~{est:.0f} s of training at "
              f"{args.assume_ms:g} ms/step with {args.workers} workers overlapping fully")
        return 0
    resume = []
    if args.resume is not None:
        try:
            resume = sweep.finished(args.resume)
        except (OSError, ValueError) as err:
            parser.error(f"--resume: {err}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sweep.run_sweep(runs, args.output, device, workers=args.workers, deadline_s=args.deadline_s,
                    meta={"preset": args.preset, "shard": args.shard, "grid": dataclasses.asdict(grid)},
                    resume=resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fla_loglinear.demo import DemoSettings, run_demo

        settings = DemoSettings.for_device(
            device=args.device,
            model=args.model,
            seq_len=args.seq_len,
            steps=args.steps,
            batch_size=args.batch_size,
            kv_pairs=args.kv_pairs,
            seed=args.seed,
        )
        try:
            settings.validate()
        except ValueError as err:
            parser.error(str(err))
        run_demo(settings, output=args.output, progress=not args.no_progress)
        return 0
    if args.command == "mqar":
        return _mqar(parser, args)
    if args.command == "bench":
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = sorted(set(parts) - {"kernels", "train", "decode"})
        if unknown or not parts:
            parser.error(f"--parts: unknown part(s) {unknown or parts}; choose from kernels, train, decode")
        if (args.compile or args.profile) and "train" not in parts:
            parser.error("--compile and --profile apply to the train part: add train to --parts")
        archs = _archs(parser, args.archs)
        from fla_loglinear.bench import run_bench

        return run_bench(
            output=args.output,
            parts=parts,
            seq_lens=_int_list(parser, "--seq-lens", args.seq_lens),
            positions=_int_list(parser, "--positions", args.positions),
            compile=args.compile,
            profile=args.profile,
            archs=archs,
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
