"""Writes every benchmark's result as soon as it finishes, so a run cut short keeps what it timed.

pytest-benchmark writes its ``--benchmark-json`` only at the end of the session: a run killed by
a timeout leaves nothing.  This hook appends one JSON line per finished benchmark to

    --bench-jsonl PATH, else $BENCH_JSONL, else $OUT/bench.jsonl (the device tool's output folder),
    else benchmarks/out/bench.jsonl (git-ignored)

with ``name, fullname, group, op, mode, T, median_ms, mean_ms, min_ms, max_ms, stddev_ms,
rounds, extra_info``.  ``benchmarks/plot.py`` reads these lines as well as the pytest-benchmark JSON.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

DEFAULT_JSONL = Path(__file__).parent / "out" / "bench.jsonl"


def pytest_addoption(parser):
    parser.addoption("--bench-jsonl", default=None,
                     help="append each finished benchmark's stats to this JSON-lines file")


def jsonl_path(config) -> Path:
    path = config.getoption("--bench-jsonl", default=None) or os.environ.get("BENCH_JSONL")
    if not path and os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], "bench.jsonl")
    return Path(path) if path else DEFAULT_JSONL


def record(meta) -> dict:
    """One line: the identifiers and the stats (in ms) of a finished ``benchmark`` fixture."""
    info = dict(meta.extra_info)
    stats = meta.stats
    ms = {f"{k}_ms": 1e3 * getattr(stats, k) for k in ("median", "mean", "min", "max", "stddev")}
    return dict(
        name=meta.name, fullname=meta.fullname, group=meta.group,
        # the GDN benchmark names its implementation "impl"
        op=info.get("op", info.get("impl")), mode=info.get("mode"), T=info.get("T"),
        **ms, rounds=stats.rounds, extra_info=info,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    if call.when != "call":
        return
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    meta = getattr(fixture, "stats", None)  # set once the benchmark has timed its rounds
    if meta is None or not meta.stats:
        return
    path = jsonl_path(item.config)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record(meta), default=str)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
