"""Time vs T plots and a markdown table from benchmark results.

Reads pytest-benchmark JSON (``--benchmark-json``) and/or the JSON lines that
``benchmarks/conftest.py`` appends as each benchmark finishes; a missing or unreadable
``X.json`` falls back to ``X.jsonl`` next to it (a run killed by a timeout writes no JSON).
Works for every op's benchmark file: the implementation is ``extra_info['op']`` (or ``'impl'``),
the panel is ``extra_info['group']`` (else the benchmark group), e.g. ``log_linear_attn fwd``.

    python benchmarks/plot.py bench.json [more.jsonl ...] OUT   # OUT: a .png, or a folder that
                                                                # gets bench.png and bench.md
The markdown table (printed, and written as ``.md`` beside the figure) has, per op family, one row
per T with fwd and fwd+bwd medians in ms of every implementation and the ratios ``ours / baseline``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

MODES = ("fwd", "fwdbwd")
MODE_NAMES = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
OURS = "ours"


def normalise(rec: dict) -> dict | None:
    """A pytest-benchmark entry or a JSON-lines record as ``{key, group, op, mode, T, median_s}``."""
    info = rec.get("extra_info") or {}
    op = info.get("op", info.get("impl", rec.get("op")))
    T = info.get("T", rec.get("T"))
    if op is None or T is None:
        return None
    if "stats" in rec:
        median = float(rec["stats"]["median"])
    elif "median_ms" in rec:
        median = float(rec["median_ms"]) / 1e3
    else:
        return None
    group = info.get("group") or rec.get("group") or "all"
    mode = info.get("mode") or rec.get("mode") or group.split()[-1]
    return dict(key=rec.get("fullname") or rec.get("name") or (group, op, T), group=group, op=op,
                mode=mode, T=int(T), median_s=median)


def read_file(path: Path) -> list[dict]:
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "benchmarks" in data:
        raw = data["benchmarks"]
    else:
        raw = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"{path}:{n}: skipping an unreadable line", file=sys.stderr)
    return [r for r in map(normalise, raw) if r is not None]


def load(paths) -> list[dict]:
    """Every result of ``paths``; a benchmark present twice keeps its last occurrence."""
    by_key: dict = {}
    for p in map(Path, paths):
        candidates = [p]
        if p.suffix == ".json":
            candidates.append(p.with_suffix(".jsonl"))
        for c in candidates:
            if c.is_file() and c.stat().st_size > 0:
                try:
                    recs = read_file(c)
                except OSError as e:
                    print(f"{c}: {e}", file=sys.stderr)
                    continue
                if recs:
                    for r in recs:
                        by_key[str(r["key"])] = r
                    break
            print(f"{c}: missing, empty or without results", file=sys.stderr)
    return list(by_key.values())


def series(records) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{group: {op: [(T, median seconds), ...]}}`` sorted by T."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r["group"]][r["op"]].append((r["T"], r["median_s"]))
    for ops in out.values():
        for points in ops.values():
            points.sort()
    return out


def family(group: str) -> str:
    words = group.split()
    return " ".join(words[:-1]) if len(words) > 1 and words[-1] in MODES else group


def markdown(records) -> str:
    """One table per op family: T rows; each implementation's fwd / fwd+bwd ms; ours / baseline."""
    fams: dict = defaultdict(dict)
    for r in records:
        if r["mode"] in MODES:
            fams[family(r["group"])][(r["T"], r["op"], r["mode"])] = r["median_s"] * 1e3
    blocks = []
    for fam, cells in sorted(fams.items()):
        ops = sorted({op for _, op, _ in cells}, key=lambda o: (o != OURS, o))
        Ts = sorted({T for T, _, _ in cells})
        base = [o for o in ops if o != OURS] if OURS in ops else []
        head = ["T"] + [f"{o} {MODE_NAMES[m]} (ms)" for m in MODES for o in ops]
        head += [f"{OURS}/{b} {MODE_NAMES[m]}" for m in MODES for b in base]
        rows = []
        for T in Ts:
            row = [str(T)]
            row += [f"{cells[(T, o, m)]:.3f}" if (T, o, m) in cells else "-" for m in MODES for o in ops]
            for m in MODES:
                for b in base:
                    a, c = cells.get((T, OURS, m)), cells.get((T, b, m))
                    row.append(f"{a / c:.2f}x" if a is not None and c else "-")
            rows.append(row)
        lines = [f"**{fam}** (median ms; ratio < 1 means ours is faster)", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot(records, out: str, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(records)
    groups = sorted(g for g, ops in data.items() if any(len(p) > 1 for p in ops.values()))
    if not groups:
        print("no group with more than one T to plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    # one colour per implementation across the panels, also when a panel lacks one of them
    ops_all = sorted({op for group in groups for op in data[group]})
    colour = {op: f"C{i % 10}" for i, op in enumerate(ops_all)}
    for ax, group in zip(axes[0], groups):
        for op, points in sorted(data[group].items()):
            ax.plot([t for t, _ in points], [s * 1e3 for _, s in points], marker="o", label=op, color=colour[op])
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
    parser.add_argument("inputs", nargs="+", help="pytest-benchmark JSON and/or JSON-lines files")
    parser.add_argument("out", help="figure path (.png), or a folder for bench.png and bench.md")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    records = load(args.inputs)
    if not records:
        raise SystemExit("no benchmark results found in " + ", ".join(args.inputs))
    out = Path(args.out)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        png, md = out / "bench.png", out / "bench.md"
    else:
        png, md = out, out.with_suffix(".md")
    table = markdown(records)
    print(table)
    md.write_text(table)
    plot(records, str(png), args.title)


if __name__ == "__main__":
    main()
