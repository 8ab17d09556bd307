"""Command line: ``python -m fla_loglinear demo``."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fla-loglinear", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run both log-linear variants on random data and check them")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fla_loglinear.demo import run_demo

        return run_demo(seed=args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
