"""Draw time vs T from a pytest-benchmark JSON: one panel per ``extra_info['group']``, one line per
``extra_info['op']``.  Generic over ops, so every op's benchmark file can reuse it.

    python benchmarks/plot.py bench.json bench.png
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict


def load(path: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{group: {op: [(T, median seconds), ...]}}`` from a pytest-benchmark JSON file."""
    with open(path) as f:
        data = json.load(f)
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if "T" not in info or "op" not in info:
            continue
        series[info.get("group", bench.get("group") or "all")][info["op"]].append(
            (int(info["T"]), float(bench["stats"]["median"]))
        )
    return series


def plot(series, out: str, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(g for g, ops in series.items() if any(len(p) > 1 for p in ops.values()))
    if not groups:
        raise SystemExit("no group with more than one T to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for op, points in sorted(series[group].items()):
            points.sort()
            ax.plot([t for t, _ in points], [s * 1e3 for _, s in points], marker="o", label=op)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (sequence length)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(group)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("png", help="where to write the figure")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    plot(load(args.json), args.png, args.title)


if __name__ == "__main__":
    main()
