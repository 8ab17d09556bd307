"""Command line of fla_loglinear.

  python -m fla_loglinear demo    train stock and log-linear Gated DeltaNet / Mamba-2 on MQAR (CPU is enough)
  python -m fla_loglinear bench   kernel benchmarks plus model-level throughput and decoding (needs a GPU)
"""
from __future__ import annotations

import argparse
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

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
    return parser


def _int_list(parser: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{flag}: expected comma-separated positive integers, got {text!r}")
    if not values or min(values) < 1:
        parser.error(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return values


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
    if args.command == "bench":
        parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = sorted(set(parts) - {"kernels", "train", "decode"})
        if unknown or not parts:
            parser.error(f"--parts: unknown part(s) {unknown or parts}; choose from kernels, train, decode")
        from fla_loglinear.bench import run_bench

        return run_bench(
            output=args.output,
            parts=parts,
            seq_lens=_int_list(parser, "--seq-lens", args.seq_lens),
            positions=_int_list(parser, "--positions", args.positions),
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
