"""The benchmark report (``python -m fla_loglinear bench``, CUDA GPU only).

Three parts, each optional:
  kernels  the pytest-benchmark suites in benchmarks/ (op-level forward / forward+backward vs fla and SDPA)
  train    training throughput (tokens/s of forward + backward + AdamW step) of stock vs log-linear
           Gated DeltaNet and Mamba-2 at ~125M parameters, bf16, over sequence lengths
  decode   time per generated token and recurrent-state memory per sequence at growing positions, for the
           log-linear models, the stock models (constant state) and a softmax-attention KV cache of the
           same width (its size is arithmetic; its time is one SDPA decode layer times the layer count)

fla's stock Mamba-2 layer runs its fast path only with mamba_ssm / causal_conv1d installed; without
them it falls back to a PyTorch SSD whose C x C intermediates may run out of memory at long T: such a
measurement is recorded as an error in the report rather than stopping it.

A decode step at position p starts from a cache whose states are random and whose FenwickState positions
are p: no need to prefill p tokens.  The log-linear models are built with just enough levels for p
(``num_levels(p + 1)``), which is where the O(log T) state comes from.
"""
from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from fla_loglinear.levels import num_levels

__all__ = ["run_bench", "model_config", "train_throughput", "decode_step", "kv_cache_bytes", "run_kernel_suites"]

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("gdn", "mamba2")
VOCAB = 32000
TOKENS_PER_STEP = 32768
DECODE_BATCH = 8
# Width and depth of the ~125M models (and of the softmax-attention reference of the same width).
SIZES = {
    "gdn": dict(hidden_size=768, num_hidden_layers=12, num_heads=6, head_dim=128, expand_v=2.0),
    "mamba2": dict(hidden_size=768, num_hidden_layers=24, head_dim=64, state_size=128, expand=2, n_groups=1),
}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def model_config(arch: str, log_linear: bool, levels: int | None = None, **overrides):
    """The config of the benchmarked ``arch`` model; ``overrides`` shrink it (tests) or change it."""
    from fla.models import GatedDeltaNetConfig, Mamba2Config

    kwargs = dict(SIZES[arch], vocab_size=VOCAB, log_linear=log_linear, use_cache=True)
    if log_linear and levels is not None:
        kwargs["log_linear_levels"] = levels
    kwargs.update(overrides)
    return GatedDeltaNetConfig(**kwargs) if arch == "gdn" else Mamba2Config(**kwargs)


def _build(config, device, dtype):
    from transformers import AutoModelForCausalLM

    from fla_loglinear.patches import patch

    patch(cpu=torch.device(device).type == "cpu")  # the CPU paths only serve the small-scale tests
    if torch.device(device).type == "cuda":
        # a failed measurement's model lived on in its traceback until now
        gc.collect()
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    # Built (and initialised) on the device: on the CPU a 125M model's init took most of the report's time.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype=dtype)


def compile_blocks(model) -> None:
    """``torch.compile`` of each block module, in place: how flame (torchtitan) compiles fla models."""
    base = getattr(model, "model", None) or model.backbone
    for block in base.layers:
        block.compile()


def freeze_lambdas(model) -> int:
    """Lambdas stay at their init (1 with ``identity``): the log-linear model computes its parent's
    function on our kernels.  Returns how many parameters were frozen."""
    frozen = [p for n, p in model.named_parameters() if ".level_proj." in n]
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)


def _profile_table(step, device, path: Path) -> None:
    """One step under torch.profiler: ops by CUDA time, then the host synchronisations and copies."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        step()
        _sync(device)
    events = prof.key_averages()
    sort = "cuda_time_total" if torch.device(device).type == "cuda" else "cpu_time_total"
    syncs = [e for e in events if any(w in e.key for w in ("Synchronize", "Memcpy", "item", "_local_scalar_dense"))]
    lines = [f"one training step (fwd+bwd+AdamW), top ops by {sort}", events.table(sort_by=sort, row_limit=40), "",
             "host synchronisations and copies (cudaStreamSynchronize / cudaMemcpy* / .item()): count, host time"]
    lines += [f"  {e.key:<48} {e.count:>6} {e.cpu_time_total / 1e3:>10.2f} ms" for e in syncs] or ["  none"]
    path.write_text("\n".join(lines) + "\n")


def train_throughput(config, seq_len: int, batch_size: int, device="cuda", dtype=torch.bfloat16,
                     warmup: int = 2, steps: int = 3, compile: bool = False, frozen_lambdas: bool = False,
                     profile_path: Path | None = None) -> dict:
    """Tokens/s of forward + backward + AdamW on random tokens, and peak memory (CUDA).

    ``compile``: each block under ``torch.compile`` (the warm-up steps pay the compilation).
    ``frozen_lambdas``: see :func:`freeze_lambdas`.  ``profile_path``: also write one profiled step there."""
    model = _build(config, device, dtype)
    model.train()
    if frozen_lambdas:
        freeze_lambdas(model)
    if compile:
        compile_blocks(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    out = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "levels": getattr(config, "log_linear_levels", None) if getattr(config, "log_linear", False) else None,
        "compile": compile,
        "warmup_s": warmup_s,
        "step_ms": seconds * 1e3,
        "tokens_per_second": batch_size * seq_len / seconds,
    }
    if torch.device(device).type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if profile_path is not None:
        _profile_table(step, device, profile_path)
        out["profile"] = str(profile_path)
    del model, opt
    return out


def _state_bytes(value) -> int:
    from dataclasses import fields, is_dataclass

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_state_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_state_bytes(v) for v in value)
    if is_dataclass(value):
        return sum(_state_bytes(getattr(value, f.name)) for f in fields(value))
    return 0


def _move_to_position(cache, position: int, generator: torch.Generator) -> int:
    """Give every FenwickState of ``cache`` random states at ``position``; returns how many were moved."""
    from fla_loglinear.state import FenwickState

    moved = 0
    for layer in cache.layers:
        state = getattr(layer, "state", None)
        if not isinstance(state, dict):
            continue
        rec = state.get("recurrent_state")
        if isinstance(rec, FenwickState):
            noise = torch.randn(rec.states.shape, generator=generator, dtype=torch.float32) * 0.02
            state["recurrent_state"] = FenwickState(
                noise.to(rec.states.device, rec.states.dtype), torch.full_like(rec.positions, position)
            )
            moved += 1
    return moved


@torch.no_grad()
def decode_step(config, position: int, batch_size: int = DECODE_BATCH, device="cuda", dtype=torch.bfloat16,
                warmup: int = 2, steps: int = 10) -> dict:
    """Milliseconds per single-token cached step at ``position`` and state bytes per sequence."""
    model = _build(config, device, dtype)
    model.eval()
    gen = torch.Generator().manual_seed(position)
    prompt = torch.randint(0, config.vocab_size, (batch_size, 4), generator=gen).to(device)
    cache = model(input_ids=prompt, use_cache=True).past_key_values
    moved = _move_to_position(cache, position, gen)
    if getattr(config, "log_linear", False) and moved == 0:
        raise RuntimeError("the log-linear model's cache holds no FenwickState: cannot place it at a position")
    token = torch.randint(0, config.vocab_size, (batch_size, 1), generator=gen).to(device)

    for _ in range(warmup):
        model(input_ids=token, past_key_values=cache, use_cache=True)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=token, past_key_values=cache, use_cache=True)
    _sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    state = sum(_state_bytes(getattr(layer, "state", None)) for layer in cache.layers)
    del model, cache
    return {"position": position, "ms_per_token": ms, "state_bytes_per_sequence": state // batch_size,
            "batch_size": batch_size}


def kv_cache_bytes(position: int, hidden_size: int, num_layers: int, bytes_per_value: int = 2) -> int:
    """Softmax attention's KV cache for one sequence at ``position`` (keys and values, every layer)."""
    return 2 * num_layers * hidden_size * position * bytes_per_value


@torch.no_grad()
def sdpa_decode_ms(position: int, hidden_size: int, num_layers: int, head_dim: int = 64,
                   batch_size: int = DECODE_BATCH, device="cuda", dtype=torch.bfloat16, steps: int = 20) -> float:
    """One query against ``position`` cached keys with SDPA, timed for one layer, times ``num_layers``."""
    import torch.nn.functional as F

    heads = hidden_size // head_dim
    q = torch.randn(batch_size, heads, 1, head_dim, device=device, dtype=dtype)
    k = torch.randn(batch_size, heads, position, head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        F.scaled_dot_product_attention(q, k, v)
    _sync(device)
    ms = (time.perf_counter() - start) / steps * 1e3
    del k, v
    return ms * num_layers


def run_kernel_suites(out: Path, timeout_s: int = 300) -> dict:
    """Run benchmarks/ under pytest-benchmark into ``out``/kernels.json, then plot it with benchmarks/plot.py."""
    bench_dir = ROOT / "benchmarks"
    if not bench_dir.is_dir():
        print(f"kernels: no benchmarks/ folder next to the package ({bench_dir}); run from a source checkout")
        return {"status": "missing", "path": str(bench_dir)}
    json_path = out / "kernels.json"
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-p", "no:cacheprovider", "--benchmark-only",
           f"--benchmark-json={json_path}"]
    print("kernels: " + " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else f"pytest exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout_s} s"
    result = {"status": status, "json": str(json_path)}
    plot = bench_dir / "plot.py"
    if json_path.exists() and plot.exists():
        proc = subprocess.run([sys.executable, str(plot), str(json_path), str(out)], cwd=ROOT)
        result["plot"] = "ok" if proc.returncode == 0 else f"plot.py exit code {proc.returncode}"
    print(f"kernels: {status}")
    return result


@contextlib.contextmanager
def _fla_gated_backward_allowed():
    """Inside: fla's stock models train on Hopper with triton < 3.7.1, where fla refuses its gated backward.

    fla 0.6.0 raises there because that triton miscompiles its ``chunk_bwd_dqkwg`` (fla issue 640):
    the stock Gated DeltaNet baseline could not be timed at all.  Its speed is valid, its gradients
    are not; the note yielded (None where fla's guard was off) says so.  Our kernels do not use that
    fla kernel.  fla's flag is put back on exit.
    """
    import fla.ops.common.chunk_o as chunk_o

    was = getattr(chunk_o, "IS_NVIDIA_HOPPER", False)
    chunk_o.IS_NVIDIA_HOPPER = False
    try:
        yield ("fla.ops.common.chunk_o.IS_NVIDIA_HOPPER was set to False so that fla's stock gated backward runs on "
               "this Hopper GPU with triton < 3.7.1: the stock baselines' times are valid, their gradients are not"
               ) if was else None
    finally:
        chunk_o.IS_NVIDIA_HOPPER = was


def _name(arch: str, log_linear: bool) -> str:
    return f"{'Gated DeltaNet' if arch == 'gdn' else 'Mamba-2'} ({'log-linear' if log_linear else 'stock'})"


def _guard(fn, *args, **kwargs) -> dict:
    """Run one measurement; a failure (OOM, missing kernel) is recorded, not fatal to the report."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the report must go on and say what failed
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        print(f"    failed: {msg}", flush=True)
        return {"error": msg}


def _record(rows: list[dict], row: dict, save) -> None:
    rows.append(row)
    if save is not None:
        save()


# (name, arch, log_linear, lambdas frozen at their init)
TRAIN_VARIANTS = (
    ("Gated DeltaNet (stock)", "gdn", False, False),
    ("Gated DeltaNet (log-linear)", "gdn", True, False),
    ("Mamba-2 (stock, PyTorch SSD)", "mamba2", False, False),
    ("Mamba-2 (log-linear, lambdas frozen at 1)", "mamba2", True, True),
    ("Mamba-2 (log-linear)", "mamba2", True, False),
)
# what each log-linear row is compared with: stock fla Mamba-2 runs its fast path only with mamba_ssm /
# causal_conv1d; without them its PyTorch SSD is no kernel baseline, so the parent function on our
# kernels (lambdas frozen at 1) is, and shows what training the lambdas costs
BASELINES = {"Gated DeltaNet (log-linear)": "Gated DeltaNet (stock)",
             "Mamba-2 (log-linear)": "Mamba-2 (log-linear, lambdas frozen at 1)"}


def _is_oom(row: dict) -> bool:
    return "out of memory" in row.get("error", "").lower()


def bench_training(seq_lens: list[int], device="cuda", rows: list | None = None, save=None, compile: bool = False,
                   profile_dir: Path | None = None, dtype=torch.bfloat16, archs=ARCHS, **overrides) -> list[dict]:
    """Training rows, appended to ``rows`` one by one with ``save()`` after each (a cut run keeps its rows).

    Log-linear models get ``num_levels(T)`` levels: the lambdas past that level are never read in a
    sequence of ``T`` tokens.  The stock PyTorch Mamba-2 halves its batch until it fits (said in the row).
    With ``profile_dir`` the log-linear Gated DeltaNet step at the middle length is profiled there."""
    rows = [] if rows is None else rows
    profiled = seq_lens[len(seq_lens) // 2]
    for name, arch, log_linear, frozen in (v for v in TRAIN_VARIANTS if v[1] in archs):
        for T in seq_lens:
            B = max(1, TOKENS_PER_STEP // T)
            levels = num_levels(T) if log_linear else None
            profile_path = None
            if profile_dir is not None and arch == "gdn" and log_linear and T == profiled:
                profile_path = profile_dir / f"profile_gdn_loglinear_T{T}{'_compiled' if compile else ''}.txt"
            while True:
                print(f"train: {name}, T={T}, B={B}" + (f", {levels} levels" if levels else "")
                      + (", compiled per block" if compile else ""), flush=True)
                r = _guard(train_throughput, model_config(arch, log_linear, levels, **overrides), T, B, device=device,
                           dtype=dtype, compile=compile, frozen_lambdas=frozen, profile_path=profile_path)
                if not (_is_oom(r) and arch == "mamba2" and not log_linear and B > 1):
                    break
                B //= 2
            _record(rows, {"name": name, "arch": arch, "log_linear": log_linear, "frozen_lambdas": frozen,
                           "seq_len": T, **r}, save)
            if "tokens_per_second" in r:
                print(f"    {r['tokens_per_second']:,.0f} tokens/s ({r['step_ms']:.1f} ms/step"
                      + (f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else "") + ")", flush=True)
    return rows


def train_table(rows: list[dict], note: str | None = None) -> str:
    """The training rows as a markdown table: tokens/s, ratio to the row's baseline, ms/step, peak memory."""
    by = {(r["name"], r["seq_len"]): r for r in rows}
    out = ["| model | T | batch | levels | tokens/s | vs baseline | ms/step | peak GiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "tokens_per_second" not in r:
            out.append(f"| {r['name']} | {r['seq_len']} | | | failed: {r.get('error', '?')} | | | |")
            continue
        base = by.get((BASELINES.get(r["name"]), r["seq_len"]), {})
        ratio = f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x" if "tokens_per_second" in base else ""
        peak = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else ""
        out.append(f"| {r['name']} | {r['seq_len']} | {r['batch_size']} | {r.get('levels') or ''} | "
                   f"{r['tokens_per_second']:,.0f} | {ratio} | {r['step_ms']:.1f} | {peak} |")
    notes = ["", "Baselines: " + "; ".join(f"{k} vs {v}" for k, v in BASELINES.items()) + "."]
    if any(r.get("compile") for r in rows):
        notes.append("Every block compiled with torch.compile (flame's per-block compile); warm-up steps untimed.")
    if note:
        notes.append(note)
    return "\n".join(out + notes) + "\n"


def bench_decoding(positions: list[int], device="cuda", rows: list | None = None, save=None, **overrides) -> list[dict]:
    """Decoding rows, recorded like :func:`bench_training`'s."""
    rows = [] if rows is None else rows
    for arch in ARCHS:
        for log_linear in (False, True):
            for p in positions:
                levels = num_levels(p + 1) if log_linear else None
                print(f"decode: {_name(arch, log_linear)}, position {p}" + (f", {levels} levels" if levels else ""),
                      flush=True)
                r = _guard(decode_step, model_config(arch, log_linear, levels, **overrides), p, device=device)
                _record(rows, {"name": _name(arch, log_linear), "arch": arch, "log_linear": log_linear,
                               "levels": levels, "position": p, **r}, save)
                if "ms_per_token" in r:
                    print(f"    {r['ms_per_token']:.3f} ms/token, state {r['state_bytes_per_sequence'] / 2**20:.2f} MiB"
                          " per sequence", flush=True)
    width = SIZES["gdn"]["hidden_size"]
    layers = SIZES["gdn"]["num_hidden_layers"]
    for p in positions:
        name = f"softmax attention KV cache ({layers} layers x {width})"
        print(f"decode: {name}, position {p}", flush=True)
        r = _guard(lambda: {"ms_per_token": sdpa_decode_ms(p, width, layers, device=device)})
        _record(rows, {"name": name, "arch": "attention", "log_linear": False, "position": p,
                       "state_bytes_per_sequence": kv_cache_bytes(p, width, layers), **r}, save)
    return rows


def _plot(train_rows: list[dict], decode_rows: list[dict], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: JSON only, no PNG plots")
        return []

    def lines(ax, rows, x, y, scale=1.0):
        for name in dict.fromkeys(r["name"] for r in rows):
            pts = [(r[x], r[y] * scale) for r in rows if r["name"] == name and y in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, ls="-" if "log-linear" in name else "--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)

    written = []
    if train_rows:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        lines(ax, train_rows, "seq_len", "step_ms")
        ax.set_xlabel("sequence length T (tokens per step fixed)")
        ax.set_ylabel("ms per training step (fwd+bwd+AdamW)")
        ax.set_title(f"Training, ~125M parameters, bf16, {TOKENS_PER_STEP} tokens per step")
        fig.tight_layout()
        fig.savefig(out / "train_throughput.png", dpi=120)
        plt.close(fig)
        written.append("train_throughput.png")
    if decode_rows:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        lines(a1, decode_rows, "position", "ms_per_token")
        a1.set_xlabel("position")
        a1.set_ylabel(f"ms per token (batch {DECODE_BATCH})")
        a1.set_title("Decoding time per token")
        lines(a2, decode_rows, "position", "state_bytes_per_sequence", 1 / 2**20)
        a2.set_xlabel("position")
        a2.set_ylabel("MiB per sequence")
        a2.set_title("Decoding state per sequence")
        fig.tight_layout()
        fig.savefig(out / "decode.png", dpi=120)
        plt.close(fig)
        written.append("decode.png")
    return written


def run_bench(output: str | Path = "benchmarks/out", parts=("kernels", "train", "decode"),
              seq_lens=(2048, 8192, 32768), positions=(1024, 16384, 131072, 1048576), compile: bool = False,
              profile: bool = False, archs=ARCHS) -> int:
    """Run the selected parts and write ``output``/{models.json, train.md, kernels.json, *.png} (and with
    ``profile`` the profiled log-linear step, ``profile_*.txt``); 2 without a GPU.  ``compile``: the
    training rows with every block under torch.compile; ``archs``: the model families of the train part."""
    if not torch.cuda.is_available():
        print("fla-loglinear bench needs a CUDA GPU: torch sees none on this machine. The kernels it times only run "
              "on a GPU (on a CPU, `python -m fla_loglinear demo` shows the models working).", file=sys.stderr)
        return 2
    import fla
    import transformers

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "fla": fla.__version__, "transformers": transformers.__version__,
                     "triton": __import__("triton").__version__},
        "parts": list(parts),
        "compile": compile,
    }
    rc = 0
    if "kernels" in parts:
        report["kernels"] = run_kernel_suites(out)
        rc |= report["kernels"]["status"] not in ("ok", "missing")
    train_rows: list[dict] = []
    decode_rows: list[dict] = []
    report.update(train=train_rows, decode=decode_rows)
    report["complete"] = False

    def save():  # after every measurement: a run cut by a time limit keeps what it measured
        (out / "models.json").write_text(json.dumps(report, indent=2))
        if train_rows:
            (out / "train.md").write_text(train_table(train_rows, report.get("note")))

    with _fla_gated_backward_allowed() as note:
        if note:
            report["note"] = note
            print(note)
        if "train" in parts:
            bench_training(list(seq_lens), rows=train_rows, save=save, compile=compile,
                           profile_dir=out if profile else None, archs=tuple(archs))
        if "decode" in parts:
            bench_decoding(list(positions), rows=decode_rows, save=save)
    report["complete"] = True
    rc |= any("error" in r for r in train_rows + decode_rows)
    report["plots"] = _plot(train_rows, decode_rows, out)
    report["total_seconds"] = time.perf_counter() - start
    save()
    _print_summary(train_rows, decode_rows)
    written = [p.name for p in (out / "train.md", *sorted(out.glob("profile_*.txt"))) if p.exists()]
    print(f"wrote {out / 'models.json'}" + "".join(f", {out / p}" for p in written + report["plots"])
          + f" in {report['total_seconds']:.0f} s")
    return int(rc)


def _print_summary(train_rows: list[dict], decode_rows: list[dict]) -> None:
    if train_rows:
        lens = sorted({r["seq_len"] for r in train_rows})
        print("\ntraining throughput, tokens/s (fwd+bwd+AdamW, bf16)")
        print(f"{'model':<44}" + "".join(f"{'T=' + str(T):>12}" for T in lens))
        for name in dict.fromkeys(r["name"] for r in train_rows):
            cells = {r["seq_len"]: r.get("tokens_per_second") for r in train_rows if r["name"] == name}
            print(f"{name:<44}" + "".join(f"{cells[T]:>12,.0f}" if cells.get(T) else f"{'failed':>12}" for T in lens))
    if decode_rows:
        pos = sorted({r["position"] for r in decode_rows})
        print(f"\ndecoding: ms per token (batch {DECODE_BATCH}) / state MiB per sequence")
        print(f"{'model':<46}" + "".join(f"{'p=' + str(p):>18}" for p in pos))
        for name in dict.fromkeys(r["name"] for r in decode_rows):
            cells = {r["position"]: r for r in decode_rows if r["name"] == name}

            def cell(p):
                r = cells.get(p, {})
                ms = f"{r['ms_per_token']:.2f}" if "ms_per_token" in r else "-"
                mib = f"{r['state_bytes_per_sequence'] / 2**20:.3g}" if "state_bytes_per_sequence" in r else "-"
                return f"{ms + ' / ' + mib:>18}"

            print(f"{name:<46}" + "".join(cell(p) for p in pos))
    print()
