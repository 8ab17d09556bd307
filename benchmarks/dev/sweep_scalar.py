"""Launch settings of the scalar op's kernels swept on a GPU: fwd+bwd time per setting (CUDA only).

    python benchmarks/dev/sweep_scalar.py 4096 16384

Each setting overrides ``num_warps`` / ``num_stages`` of some kernels (by wrapping their ``run``;
the op's code is untouched) and times 10 forward + backward passes of the benchmark shape with CUDA
events after a warm-up that compiles.  The op's defaults are the first line; a setting that wins
here is then written into the op and measured by the benchmark suite.
"""
from __future__ import annotations

import sys

import torch

from fla_loglinear.ops.log_linear_attn import chunk_bwd, chunk_fwd, chunk_nodes

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from profile_ops import make_step  # noqa: E402

PER_CHUNK = [chunk_fwd.chunk_log_linear_attn_fwd_o_kernel, chunk_bwd.chunk_log_linear_attn_bwd_dv_kernel,
             chunk_bwd.chunk_log_linear_attn_bwd_dqk_kernel]
SCANS = [chunk_nodes.chunk_fenwick_nodes_fwd_kernel, chunk_nodes.chunk_fenwick_nodes_bwd_kernel]
DNODES = [chunk_bwd.chunk_log_linear_attn_bwd_dnodes_kernel]

# name -> [(kernels, launch options)]
SETTINGS = {
    "defaults": [],
    "per-chunk warps=8": [(PER_CHUNK, dict(num_warps=8))],
    "fwd_o warps=8": [(PER_CHUNK[:1], dict(num_warps=8))],
    "dv warps=8": [(PER_CHUNK[1:2], dict(num_warps=8))],
    "dqk warps=8": [(PER_CHUNK[2:], dict(num_warps=8))],
    "per-chunk stages=1": [(PER_CHUNK, dict(num_stages=1))],
    "dqk stages=1": [(PER_CHUNK[2:], dict(num_stages=1))],
    "scans warps=2": [(SCANS, dict(num_warps=2))],
    "dnodes stages=1": [(DNODES, dict(num_stages=1))],
}


def apply(setting):
    """Wraps each kernel's ``run`` so that its launches take the options; returns an undo."""
    undo = []
    for kernels, opts in setting:
        for kern in kernels:
            orig = kern.run

            def run(*args, _orig=orig, _opts=opts, **kwargs):
                kwargs.update(_opts)
                return _orig(*args, **kwargs)
            kern.run = run
            undo.append((kern, orig))
    return lambda: [setattr(k, "run", o) for k, o in undo]


def report(name: str, width: int, measure, undo) -> None:
    """Prints ``name`` and what ``measure()`` returns, or why it failed; calls ``undo()`` either way."""
    try:
        print(f"{name:<{width}} {measure()}", flush=True)
    except Exception as e:  # a setting that does not compile or fit is a result, not the end
        print(f"{name:<{width}} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    finally:
        undo()


def time_ms(step, iters: int = 10) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main(lengths: list[int]) -> None:
    steps = {T: make_step("scalar", T) for T in lengths}
    for name, setting in SETTINGS.items():
        report(name, 28, lambda: "  ".join(f"T={T}: {time_ms(steps[T]):7.3f} ms" for T in lengths), apply(setting))


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [4096, 16384])
