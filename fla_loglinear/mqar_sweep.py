"""A Zoology-style MQAR sweep: log-linear Gated DeltaNet / Mamba-2 against their linear parents.

Every run goes through the user's path: a stock fla model from its config after
``fla_loglinear.patch()`` (:func:`fla_loglinear.demo.build_model`), converted with
``fla_loglinear.convert()`` for the log-linear variants, trained and scored by the demo's
helpers.  The linear parent is fla's stock model where fla trains it; where fla refuses
(:func:`fla_loglinear.demo.fla_refuses_training`) it is the log-linear model with every lambda
frozen at 1 (identity init, ``requires_grad=False``), which computes exactly the parent's function
with this package's kernels.  Each result records which parent it is.

Independent runs go to worker processes on the one device (tiny models are bound by launches and
host work, so several CUDA processes overlap); results are written after every run, so a call cut
by its time limit keeps what finished.  ``--shard i/n`` splits a grid across calls, ``--merge``
joins their JSONs and redraws the table and figure.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fla_loglinear.layers.level_scales import DEFAULT_LAMBDA_FORM

__all__ = [
    "VARIANTS", "PRESETS", "Run", "SweepGrid", "plan", "shard", "parent_kind", "run_one", "run_sweep", "finished",
    "variant_of", "warmup_runs",
    "merge", "summarize", "markdown_table", "plot",
]

# variant -> (log_linear, lambda_form, lambda_init); "parent" is the linear model, "log-linear" the
# default lambda form at the identity init
VARIANTS = {
    "parent": (False, None, None),
    "log-linear": (True, DEFAULT_LAMBDA_FORM, "identity"),
    "paper-random": (True, "paper", "random"),
    "lowrank": (True, "lowrank", "identity"),
    "lowrank-random": (True, "lowrank", "random"),
}
MAIN_VARIANTS = ("parent", "log-linear")
FORM_VARIANTS = ("paper-random", "lowrank", "lowrank-random")


def variant_of(result: dict) -> str:
    """The variant a result's recorded options make (JSONs written under another default stay right)."""
    if not result.get("log_linear"):
        return "parent"
    options = (True, result.get("lambda_form"), result.get("lambda_init"))
    return next(name for name, v in VARIANTS.items() if v == options)


@dataclass(frozen=True)
class Run:
    """One training run; ``key`` identifies it across shards and merges."""

    arch: str
    variant: str
    width: int
    kv_pairs: int
    lr: float
    seed: int
    steps: int
    batch_size: int
    seq_len: int
    vocab_size: int
    num_test: int
    num_layers: int = 2

    @property
    def key(self) -> str:
        return (f"{self.arch}/{self.variant}/w{self.width}/kv{self.kv_pairs}/T{self.seq_len}/V{self.vocab_size}"
                f"/lr{self.lr:g}/s{self.seed}/steps{self.steps}/B{self.batch_size}")


@dataclass(frozen=True)
class SweepGrid:
    """What a preset (or the flags over it) sweeps.

    Main grid: ``archs x widths x kv_pairs x lrs`` for the parent and the default log-linear form,
    seed 0 everywhere and every seed of ``seeds`` at ``seed_widths``; form grid: the other lambda
    forms / inits at ``form_widths`` (where the parent is weakest) with every seed and lr.
    """

    archs: tuple[str, ...] = ("gdn", "mamba2")
    widths: tuple[int, ...] = (32, 64, 128)
    kv_pairs: tuple[int, ...] = (16,)
    lrs: tuple[float, ...] = (1e-3, 2e-3, 4e-3)
    seeds: tuple[int, ...] = (0, 1)
    seed_widths: tuple[int, ...] = (32, 64)
    form_widths: tuple[int, ...] = (32,)
    # the other lambda form, and the default form from a random init; lowrank-random on request
    form_variants: tuple[str, ...] = ("lowrank", "paper-random")
    steps: int = 1000
    batch_size: int = 256
    seq_len: int = 256
    vocab_size: int = 256
    num_test: int = 1024


# full: Zoology's T = 256, but a 256-token vocabulary (128 keys, 128 values) instead of 8192 and 16 pairs:
# in 1000 steps (2026-12-07, H100) vocabulary 8192 left every model at chance, and at 32 pairs Mamba-2
# stayed at chance and Gated DeltaNet reached at most 11%, still learning; a one-GPU session cannot train
# the ~100K-example x 64-epoch schedule that Zoology uses.  Tiny models are bound by launches, so a batch
# of 256 costs about what 64 does and gives each step four times the examples.  At lr 1e-2 both models
# diverged at 32 pairs, hence 1e-3 / 2e-3 / 4e-3.  84 runs x 1000 steps at ~100 ms per step (12 processes
# sharing one GPU) is ~12 min of training.
PRESETS = {
    "full": SweepGrid(),
    # the demo's task on a 2-core CPU (~25 min with 2 workers): models learn it in 450 steps, so the
    # widths, seeds and lambda forms can be compared where the GPU budget could not train them
    "cpu": SweepGrid(widths=(16, 32, 64), kv_pairs=(4,), lrs=(2e-3, 5e-3, 1e-2), seeds=(0, 1),
                     seed_widths=(16, 32, 64), form_widths=(16,), form_variants=("lowrank", "paper-random"),
                     steps=450, batch_size=16, seq_len=32, vocab_size=64, num_test=256),
    "smoke": SweepGrid(widths=(32, 64), lrs=(2e-3,), seeds=(0,), seed_widths=(), form_widths=(32,),
                       form_variants=("paper",), steps=60, batch_size=64, num_test=256),
    "cpu-tiny": SweepGrid(widths=(16,), kv_pairs=(4,), lrs=(5e-3,), seeds=(0, 1), seed_widths=(16,),
                          form_widths=(16,), form_variants=("paper-random",), steps=3, batch_size=4, seq_len=32,
                          vocab_size=64, num_test=8),
}


def plan(grid: SweepGrid) -> list[Run]:
    """Every run of ``grid``, most important first (seed 0 of the main grid, then more seeds, then forms)."""
    g = grid
    common = dict(steps=g.steps, batch_size=g.batch_size, seq_len=g.seq_len, vocab_size=g.vocab_size,
                  num_test=g.num_test)
    runs: list[Run] = []

    def add(variants, widths, seeds):
        for seed in seeds:
            for kv in g.kv_pairs:
                for width in widths:
                    for arch in g.archs:
                        for lr in g.lrs:
                            for variant in variants:
                                run = Run(arch, variant, width, kv, lr, seed, **common)
                                if run not in runs:
                                    runs.append(run)

    add(MAIN_VARIANTS, g.widths, g.seeds[:1])
    add(MAIN_VARIANTS, [w for w in g.widths if w in g.seed_widths], g.seeds[1:])
    add(g.form_variants, g.form_widths, g.seeds)
    return runs


def shard(runs: list[Run], index: int, count: int) -> list[Run]:
    """The ``index``-th (1-based) of ``count`` interleaved shards: each shard gets a share of every priority.

    The variants of one setting (arch, width, pairs, lr, seed) stay in one shard, so that a parent and
    its log-linear model run (and are timed) in the same call.
    """
    if not 1 <= index <= count:
        raise ValueError(f"--shard {index}/{count}: expected 1 <= i <= n")
    points = list(dict.fromkeys(replace(r, variant="") for r in runs))
    mine = set(points[index - 1::count])
    return [r for r in runs if replace(r, variant="") in mine]


def parent_kind(arch: str, device: str) -> tuple[str, str | None]:
    """("fla-stock", None) where fla trains its stock model on ``device``, else ("frozen-lambda", fla's reason)."""
    from fla_loglinear.demo import fla_refuses_training

    reason = fla_refuses_training(arch, device)
    return ("fla-stock", None) if reason is None else ("frozen-lambda", reason)


def _settings(run: Run, device: str):
    from fla_loglinear.demo import DemoSettings

    return DemoSettings(archs=(run.arch,), device=device, seq_len=run.seq_len, steps=run.steps,
                        batch_size=run.batch_size, kv_pairs=run.kv_pairs, vocab_size=run.vocab_size,
                        hidden_size=run.width, num_layers=run.num_layers, lr=run.lr,
                        warmup_steps=max(1, min(100, run.steps // 10)), num_test=run.num_test, seed=run.seed)


def _curve(losses: list[float], points: int = 100) -> list[list[float]]:
    """[step, mean loss of the window ending there] at about ``points`` places."""
    k = max(1, math.ceil(len(losses) / points))
    return [[min(i + k, len(losses)), sum(losses[i:i + k]) / len(losses[i:i + k])] for i in range(0, len(losses), k)]


def build(run: Run, device: str):
    """(model, parent kind or None): the run's model, on ``device``, before training."""
    from fla_loglinear.demo import build_model, log_linear_twin

    s = _settings(run, device)
    log_linear, form, init = VARIANTS[run.variant]
    stock = build_model(run.arch, s)
    if log_linear:
        return log_linear_twin(stock, s, lambda_init=init, lambda_form=form), None
    kind, _ = parent_kind(run.arch, device)
    if kind == "fla-stock":
        return stock, kind
    # the same weights as the stock model, every lambda fixed at 1: the parent's function on our kernels
    model = log_linear_twin(stock, s)
    for mixer_param in (p for n, p in model.named_parameters() if ".level_proj." in n):
        mixer_param.requires_grad_(False)
    return model, kind


def run_one(run: Run, device: str) -> dict:
    """Train and score one run; failures come back as a result with ``error`` (the sweep goes on)."""
    import torch

    from fla_loglinear.demo import evaluate, train_model
    from fla_loglinear.levels import num_levels
    from fla_loglinear.mqar import mqar_splits

    out = {"key": run.key, **asdict(run)}
    log_linear, form, init = VARIANTS[run.variant]
    out.update(log_linear=log_linear, lambda_form=form, lambda_init=init,
               num_levels=num_levels(run.seq_len) if log_linear else None)
    try:
        s = _settings(run, device)
        s.validate()
        model, kind = build(run, device)
        out["parent_kind"] = kind
        if kind == "frozen-lambda":
            out["parent_note"] = parent_kind(run.arch, device)[1]
        out["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train, test = mqar_splits(s.num_train, s.num_test, s.seq_len, s.kv_pairs, s.vocab_size, s.seed)
        t = train_model(model, train, s, progress=False)
        test_loss, acc = evaluate(model, test, s)
        tail = t.losses[-min(10, len(t.losses)):]
        out.update(accuracy=acc, test_loss=test_loss, final_loss=sum(tail) / len(tail),
                   loss_curve=_curve(t.losses), train_seconds=t.seconds, steps_per_second=run.steps / t.seconds,
                   ms_per_step=t.ms_per_step)
        del model
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    except Exception as error:  # noqa: BLE001 - one failing run is a row of the report, not the end of the sweep
        out["error"] = f"{type(error).__name__}: {error}"
        out["traceback"] = traceback.format_exc()[-3000:]
    return out


# ------------------------------------------------------------------ workers

_DURATIONS = None  # shared {cost key: longest seconds} of a worker pool (set by _worker_init)
_DEADLINE = None


def _cost_key(run: Run) -> str:
    # runs that cost the same: one model on one shape (the lambda form and the lr change nothing)
    return f"{run.arch}/{VARIANTS[run.variant][0]}/w{run.width}/T{run.seq_len}/B{run.batch_size}/steps{run.steps}"


def _too_late(run: Run, durations, deadline: float | None) -> bool:
    """Past the deadline, or a run like this one took longer than what is left (1.2x margin).

    A run is estimated from the longest finished run of its cost key alone: a Mamba-2 run is not held
    back because a Gated DeltaNet run at another width took longer, and an unknown key starts."""
    if deadline is None:
        return False
    now = time.time()
    return now >= deadline or now + 1.2 * durations.get(_cost_key(run), 0.0) > deadline


def _took(durations, run: Run, seconds: float) -> None:
    # in a pool, a race between two workers of one key only loses the smaller of two durations
    key = _cost_key(run)
    durations[key] = max(durations.get(key, 0.0), seconds)


def _worker_init(durations, deadline):
    global _DURATIONS, _DEADLINE
    import torch

    # the models are tiny: host threads only contend with the other workers
    torch.set_num_threads(1)
    _DURATIONS, _DEADLINE = durations, deadline


def _worker(args):
    run, device = args
    if _too_late(run, _DURATIONS, _DEADLINE):
        return {"key": run.key, **asdict(run), "skipped": "deadline: not started, it would not finish in time"}
    start = time.time()
    result = run_one(run, device)
    _took(_DURATIONS, run, time.time() - start)
    return result


def warmup_runs(runs: list[Run]) -> list[Run]:
    """One two-step run per distinct compiled shape of ``runs`` (model, log-linear or not, width, T, batch)."""
    shapes = {}
    for run in runs:
        shape = (run.arch, VARIANTS[run.variant][0], run.width, run.seq_len, run.batch_size)
        shapes.setdefault(shape, replace(run, steps=2, num_test=128))
    return list(shapes.values())


def _warm(args):
    run, device = args
    result = run_one(run, device)
    return result.get("error")


def _meta(device: str, extra: dict) -> dict:
    import fla
    import torch
    import transformers

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else "cpu"
    return {"device": device, "device_name": name, "versions": {
        "torch": torch.__version__, "triton": triton_version, "fla": fla.__version__,
        "transformers": transformers.__version__}, **extra}


def _write(path: Path, meta: dict, results: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": [meta], "runs": results}, indent=1))
    os.replace(tmp, path)


def _load(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "runs" not in data:
        raise ValueError(f"{path}: not a sweep JSON (no 'runs')")
    return data


def finished(path: str | Path) -> list[dict]:
    """The runs of the sweep JSON ``path`` that have a result (for ``--resume``)."""
    data = _load(path)
    # a key names its variant; a result whose recorded options are another variant's (written under
    # another default form) is not this key's result
    return [r for r in data["runs"] if "accuracy" in r and variant_of(r) == r["variant"]]


def run_sweep(runs: list[Run], output: str | Path, device: str, workers: int = 1,
              deadline_s: float | None = None, meta: dict | None = None, resume: list[dict] = ()) -> dict:
    """Run ``runs`` (in ``workers`` processes when > 1), write ``output`` after each, then the table / PNG.

    ``resume``: results of an earlier call (:func:`finished`); their runs are kept, not run again."""
    import torch

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    kept = {r["key"] for r in resume}
    runs = [r for r in runs if r.key not in kept]
    meta = _meta(device, {"workers": workers, "deadline_s": deadline_s, "planned_runs": len(runs),
                          "resumed_runs": len(kept), **(meta or {})})
    deadline = None if deadline_s is None else start + deadline_s
    results: list[dict] = list(resume)

    def done(result: dict) -> None:
        results.append(result)
        meta["wall_seconds"] = time.time() - start
        _write(path, meta, results)
        state = result.get("error") or result.get("skipped") or f"{result['accuracy']:.1%} ({result['ms_per_step']:.1f} ms/step)"
        print(f"[{len(results) - len(kept)}/{len(runs)} {time.time() - start:.0f}s] {result['key']}: {state}", flush=True)

    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            durations: dict[str, float] = {}
            for run in runs:
                if _too_late(run, durations, deadline):
                    done({"key": run.key, **asdict(run), "skipped": "deadline: not started"})
                    continue
                t0 = time.time()
                done(run_one(run, device))
                _took(durations, run, time.time() - t0)
        finally:
            torch.set_num_threads(threads)
    else:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")  # CUDA cannot be forked
        with ctx.Manager() as manager, ctx.Pool(workers, initializer=_worker_init,
                                                 initargs=(manager.dict(), deadline)) as pool:
            if torch.device(device).type == "cuda":
                # Workers that start together would each compile (and autotune) the same Triton kernels;
                # one short run per distinct model shape fills the shared cache first, in parallel.
                shapes = warmup_runs(runs)
                for error in pool.imap_unordered(_warm, [(run, device) for run in shapes]):
                    if error:
                        print(f"warm-up run failed (its runs will report it): {error}", flush=True)
                meta["warmup_seconds"] = time.time() - start
                print(f"compiled {len(shapes)} model shapes in {meta['warmup_seconds']:.0f} s", flush=True)
            for result in pool.imap_unordered(_worker, [(run, device) for run in runs]):
                done(result)
    report = {"meta": [meta], "runs": results}
    finish(report, path)
    timed = [r["ms_per_step"] for r in results if "ms_per_step" in r]
    if timed:
        # measured with this many workers side by side, so contention is in the figure
        ms = statistics.median(timed)
        full = plan(PRESETS["full"])
        print(f"median {ms:.1f} ms/step with {workers} worker(s): the full preset ({len(full)} runs) would train for "
              f"~{estimate_seconds(full, ms, workers):.0f} s with {workers} worker(s) (compile and evaluation not included)")
    return report


# ------------------------------------------------------------------ merging and reporting

def merge(paths: list[str | Path]) -> dict:
    """One report from several sweep JSONs; a run (by key) that finished anywhere beats a skipped / failed copy."""
    metas, by_key = [], {}
    for p in paths:
        data = _load(p)
        metas.extend(data.get("meta", []))
        for r in data["runs"]:
            old = by_key.get(r["key"])
            if old is None or ("accuracy" in r and "accuracy" not in old):
                by_key[r["key"]] = r
    return {"meta": metas, "runs": list(by_key.values())}


def summarize(runs: list[dict]) -> list[dict]:
    """Per (arch, kv_pairs, width, variant): the lr with the best seed-mean accuracy, its seeds and timing."""
    groups: dict[tuple, dict[float, list[dict]]] = {}
    for r in runs:
        if "accuracy" not in r:
            continue
        point = (r["arch"], r["seq_len"], r["kv_pairs"], r["width"], variant_of(r))
        groups.setdefault(point, {}).setdefault(r["lr"], []).append(r)
    rows = []
    for (arch, seq_len, kv, width, variant), by_lr in sorted(groups.items()):
        lr, best = max(by_lr.items(), key=lambda item: statistics.fmean(x["accuracy"] for x in item[1]))
        accs = [x["accuracy"] for x in best]
        rows.append({
            "arch": arch, "seq_len": seq_len, "kv_pairs": kv, "width": width, "variant": variant, "best_lr": lr,
            "accuracy": statistics.fmean(accs), "accuracy_min": min(accs), "accuracy_max": max(accs),
            "seeds": sorted(x["seed"] for x in best), "lrs_tried": sorted(by_lr),
            "ms_per_step": statistics.median(x["ms_per_step"] for v in by_lr.values() for x in v),
            "parent_kind": best[0].get("parent_kind"),
        })
    return rows


def markdown_table(report: dict) -> str:
    rows = summarize(report["runs"])
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    names = {"gdn": "Gated DeltaNet", "mamba2": "Mamba-2"}
    kinds = {(r["arch"], r["parent_kind"]) for r in rows if r["variant"] == "parent"}
    lines = ["| model | T | pairs | width | " + " | ".join(variants) + " | ms/step (" + " / ".join(variants) + ") |",
             "|---" * (5 + len(variants)) + "|"]
    points = sorted({(r["arch"], r["seq_len"], r["kv_pairs"], r["width"]) for r in rows})
    for point in points:
        cells, times = [], []
        for v in variants:
            r = next((r for r in rows if (r["arch"], r["seq_len"], r["kv_pairs"], r["width"]) == point
                      and r["variant"] == v), None)
            if r is None:
                cells.append("-")
                times.append("-")
                continue
            spread = f" [{r['accuracy_min']:.1%}, {r['accuracy_max']:.1%}]" if len(r["seeds"]) > 1 else ""
            cells.append(f"{r['accuracy']:.1%}{spread} n={len(r['seeds'])} lr={r['best_lr']:g}")
            times.append(f"{r['ms_per_step']:.1f}")
        lines.append(f"| {names.get(point[0], point[0])} | {point[1]} | {point[2]} | {point[3]} | "
                     + " | ".join(cells) + " | " + " / ".join(times) + " |")
    failed = [r for r in report["runs"] if "accuracy" not in r]
    notes = [f"Accuracy: mean over seeds at the best lr of {', '.join(map(str, sorted({lr for r in rows for lr in r['lrs_tried']})))}"
             " (seed-mean per lr, best kept), [min, max] over seeds; ms/step: median over that point's runs.",
             ]
    if kinds:
        notes.append("Parent: " + "; ".join(f"{names.get(a, a)} = {k}" for a, k in sorted(kinds, key=str))
                     + " (fla-stock: fla's own layer; frozen-lambda: the log-linear model with every lambda frozen"
                     " at 1, exactly the parent's function on this package's kernels).")
    if failed:
        notes.append(f"{len(failed)} run(s) without a result: "
                     + "; ".join(f"{r['key']}: {r.get('error') or r.get('skipped')}" for r in failed[:10]))
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def plot(report: dict, path: str | Path) -> bool:
    """Accuracy against width, one line per variant, a panel per (model, pairs); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install matplotlib)")
        return False
    rows = summarize(report["runs"])
    if not rows:
        return False
    panels = sorted({(r["arch"], r["seq_len"], r["kv_pairs"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    names = {"gdn": "Gated DeltaNet", "mamba2": "Mamba-2"}
    for ax, (arch, seq_len, kv) in zip(axes[0], panels):
        for v in VARIANTS:
            pts = sorted((r["width"], r) for r in rows if (r["arch"], r["seq_len"], r["kv_pairs"], r["variant"])
                         == (arch, seq_len, kv, v))
            if not pts:
                continue
            xs = [w for w, _ in pts]
            ys = [100 * r["accuracy"] for _, r in pts]
            err = [[100 * (r["accuracy"] - r["accuracy_min"]) for _, r in pts],
                   [100 * (r["accuracy_max"] - r["accuracy"]) for _, r in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=v, ls="--" if v == "parent" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model width")
        ax.set_ylabel("MQAR accuracy (%)")
        ax.set_title(f"{names.get(arch, arch)}: T={seq_len}, {kv} pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def finish(report: dict, path: Path) -> None:
    """Write ``path`` (the JSON), ``.md`` (the table) and ``.png`` (the figure) beside it; print the table."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=1))
    table = markdown_table(report)
    path.with_suffix(".md").write_text(table)
    wrote = plot(report, path.with_suffix(".png"))
    print("\n" + table)
    print(f"wrote {path}, {path.with_suffix('.md')}" + (f", {path.with_suffix('.png')}" if wrote else ""))


def estimate_seconds(runs: list[Run], ms_per_step: float, workers: int) -> float:
    """Training time of ``runs`` at ``ms_per_step`` per step per process, ``workers`` overlapping fully."""
    return sum(r.steps for r in runs) * ms_per_step / 1000 / max(1, workers)


def grid_with(grid: SweepGrid, **overrides) -> SweepGrid:
    """``grid`` with every override that is not None."""
    return replace(grid, **{k: v for k, v in overrides.items() if v is not None})
