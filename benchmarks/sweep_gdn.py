"""Block widths and launch settings of the Gated DeltaNet slot scans swept on a GPU (CUDA only).

    python benchmarks/sweep_gdn.py 4096 65536

Each setting replaces ``chunk_inter._blocks`` (the V block width and warps of the forward sweep, the
slot-gradient scan and the per-chunk gradient kernel) and/or wraps a kernel's ``run`` to override its
launch options, as ``sweep_scalar.py`` does; the op's code is untouched.  Per length it prints the
fwd+bwd time (CUDA events, after a warm-up that compiles) and the largest difference of the output and
every gradient from the defaults' (relative to their largest value), so that a fast setting that
computes something else shows.  At 64K (B = 1) the scans run on N * HV * V / BV = 64 programs for the
H200's 132 SMs (results run 17): narrower V blocks are the first thing to try.
"""
from __future__ import annotations

import sys

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_inter, chunk_log_linear_gated_delta_rule

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from profile_ops import make_inputs  # noqa: E402
from sweep_scalar import apply, time_ms  # noqa: E402

DEFAULT_BLOCKS = chunk_inter._blocks
GRADS = [chunk_inter.chunk_inter_grads_kernel]


def blocks(BV: int | None = None, num_warps: int | None = None):
    """``_blocks`` with the V block width and / or the warps replaced."""
    def _blocks(K, V):
        BK, bv, nw = DEFAULT_BLOCKS(K, V)
        return BK, BV or bv, num_warps or nw
    return _blocks


# name -> (_blocks replacement or None, [(kernels, launch options)])
SETTINGS = {
    "defaults": (None, []),
    "scans BV=16 warps=4, grads warps=8": (blocks(16, 4), [(GRADS, dict(num_warps=8))]),
    "scans BV=16 warps=8": (blocks(16, 8), []),
    "scans BV=32 warps=4, grads warps=8": (blocks(32, 4), [(GRADS, dict(num_warps=8))]),
    "scans BV=64": (blocks(64), []),
    "grads stages=1": (None, [(GRADS, dict(num_stages=1))]),
    "grads warps=4": (None, [(GRADS, dict(num_warps=4))]),
}


def make_case(T: int):
    """A fwd+bwd step of the benchmark shape that returns the output and every gradient."""
    leaves, do = make_inputs("gdn", T)

    def step():
        o = chunk_log_linear_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True)[0]
        return [o.detach()] + list(torch.autograd.grad(o, leaves, do))
    return step


def max_rel_diff(got, want) -> float:
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
               for a, b in zip(got, want))


def main(lengths: list[int]) -> None:
    steps = {T: make_case(T) for T in lengths}
    reference = {T: steps[T]() for T in lengths}
    for name, (replacement, launches) in SETTINGS.items():
        if replacement is not None:
            chunk_inter._blocks = replacement
        undo = apply(launches)
        try:
            cols = []
            for T in lengths:
                diff = max_rel_diff(steps[T](), reference[T])
                cols.append(f"T={T}: {time_ms(steps[T]):7.3f} ms (diff {diff:.1e})")
            print(f"{name:<36} " + "  ".join(cols), flush=True)
        except Exception as e:  # a setting that does not compile or fit is a result, not the end
            print(f"{name:<36} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            undo()
            chunk_inter._blocks = DEFAULT_BLOCKS


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [4096, 65536])
