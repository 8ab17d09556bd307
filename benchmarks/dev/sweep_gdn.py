"""Launch plans of the chunked Gated DeltaNet op swept on a GPU (CUDA only).

    python benchmarks/dev/sweep_gdn.py 4096 65536
    python benchmarks/dev/sweep_gdn.py 8192 --only "scans BV=16 warps=4;scans BV=32 warps=4"

Each setting maps the default :class:`GDNLaunchPlan` of the call's shapes to another (passed to the
op through its private ``_plan`` keyword) and/or wraps a kernel's ``run`` (the per-chunk gradient
kernel's, the chunk-local kernels') to override its launch options, as ``sweep_scalar.py`` does.  Per
length it prints the fwd+bwd time (CUDA events, after a warm-up that compiles) and the largest
difference of the output and every gradient from the defaults' (relative to their largest value), so
that a fast setting that computes something else shows.  A setting that changes the sweeps' block
width keeps the stream choices of the default width.
"""
from __future__ import annotations

import dataclasses
import sys

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_inter_bwd, chunk_local_fused

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from profile_ops import make_inputs, make_step  # noqa: E402
from sweep_scalar import apply, report, time_ms  # noqa: E402

from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for  # noqa: E402

GRADS = [chunk_inter_bwd.chunk_inter_grads_kernel]
LOCAL_FWD = [chunk_local_fused.chunk_local_fused_fwd_kernel]
LOCAL_BWD = [chunk_local_fused.chunk_local_fused_bwd_kernel]


def scans(BV: int, num_warps: int, prefetch=None):
    """The sweeps at ``BV`` / ``num_warps`` whatever the programs; prefetching where the default rule
    would take it at that width (K = 128, BV = 16) unless ``prefetch`` says."""
    def change(plan, K):
        on = (K == 128 and BV == 16) if prefetch is None else prefetch
        return dataclasses.replace(plan, sweep_bv=BV, sweep_warps=num_warps, prefetch=on)
    return change


def fields(**values):
    return lambda plan, K: dataclasses.replace(plan, **values)


def both(*changes):
    def change(plan, K):
        for c in changes:
            plan = c(plan, K)
        return plan
    return change


def keep(plan, K):
    return plan


# the schedule choices forced on at every length (where the default plan takes them with few programs)
SEGMENTS_EVERYWHERE = fields(segment_chunks=24)
BESIDE_EVERYWHERE = fields(replay_beside=True)
SPLIT_EVERYWHERE = fields(split_grads=True)

# name -> (plan change, [(kernels, launch options)])
SETTINGS = {
    "defaults": (keep, []),
    "scans BV=16 warps=4": (scans(16, 4), []),
    "scans BV=32 warps=4": (scans(32, 4), []),
    "scans BV=32 warps=8": (scans(32, 8), []),
    # 16-bit only (8-column TF32 products are the narrow wgmma of triton-lang/triton#10629)
    "scans BV=8 warps=4": (scans(8, 4), []),
    "no prefetch": (fields(prefetch=False), []),
    "replay then scan": (fields(replay_beside=False, split_grads=False), []),
    "grads after the scan": (fields(split_grads=False), []),
    "grads split at every length": (SPLIT_EVERYWHERE, []),
    "no segmented forward": (fields(segment_chunks=0), []),
    "no lead priority": (fields(lead_priority=False), []),
    "no extra streams": (fields(streams=False, replay_beside=False, split_grads=False), []),
    **{f"segments of {n} chunks": (lambda plan, K, n=n: dataclasses.replace(plan, segment_chunks=n)
                                   if plan.segment_chunks else plan, []) for n in (8, 12, 16, 24, 32, 64)},
    "segmented forward at every length": (SEGMENTS_EVERYWHERE, []),
    "segmented forward at every length, 64 chunks": (fields(segment_chunks=64), []),
    "segmented forward at every length, 8 chunks": (fields(segment_chunks=8), []),
    "side by side at every length": (BESIDE_EVERYWHERE, []),
    # 64-wide sweep blocks halve the programs at 8K / 16K, so that the replay fits beside the scan
    "scans BV=64 warps=4": (scans(64, 4), []),
    "scans BV=64 warps=8": (scans(64, 8), []),
    "side by side BV=64": (both(scans(64, 4), BESIDE_EVERYWHERE), []),
    "side by side BV=64 warps=8": (both(scans(64, 8), BESIDE_EVERYWHERE), []),
    "side by side BV=64 split grads": (both(scans(64, 4), BESIDE_EVERYWHERE, SPLIT_EVERYWHERE), []),
    "prefetch BV=32 too": (lambda plan, K: dataclasses.replace(plan, prefetch=K == 128), []),
    # the per-chunk gradient kernel's V blocks with 16-bit tiles at K = 128
    "grads BV=32": (fields(grads_bv=32), []),
    "grads BV=128": (fields(grads_bv=128), []),
    "grads stages=1": (keep, [(GRADS, dict(num_stages=1))]),
    "grads warps=4": (keep, [(GRADS, dict(num_warps=4))]),
    "local bwd warps=8": (keep, [(LOCAL_BWD, dict(num_warps=8))]),
    "local bwd stages=1": (keep, [(LOCAL_BWD, dict(num_stages=1))]),
    "local bwd stages=2": (keep, [(LOCAL_BWD, dict(num_stages=2))]),
    "local fwd warps=4": (keep, [(LOCAL_FWD, dict(num_warps=4))]),
}


def default_plan(leaves):
    q, v = leaves[0], leaves[2]
    return plan_for(q.shape[-1], v.shape[-1], v.shape[0] * v.shape[2], v.dtype, v.device)


def make_case(T: int, change):
    """A fwd+bwd step of the benchmark shape under the plan ``change`` gives; returns the output and
    every gradient."""
    leaves, do = make_inputs("gdn", T)
    plan = change(default_plan(leaves), leaves[0].shape[-1])
    forward = make_step("gdn", T, forward_only=True, leaves=leaves, plan=plan)

    def step():
        o = forward()
        return [o.detach()] + list(torch.autograd.grad(o, leaves, do))
    return step


def max_rel_diff(got, want) -> float:
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
               for a, b in zip(got, want))


def main(lengths: list[int], only: list[str] | None = None) -> None:
    """Times every setting (or those named in ``only``, after the defaults) at each length."""
    reference = {T: make_case(T, keep)() for T in lengths}
    names = list(SETTINGS) if not only else ["defaults", *only]
    for name in names:
        change, launches = SETTINGS[name]
        steps = {T: make_case(T, change) for T in lengths}

        def measure():
            cols = []
            for T in lengths:
                diff = max_rel_diff(steps[T](), reference[T])
                cols.append(f"T={T}: {time_ms(steps[T]):7.3f} ms (diff {diff:.1e})")
            return "  ".join(cols)

        report(name, 36, measure, apply(launches))


if __name__ == "__main__":
    # lengths, then optionally --only "setting;setting"
    args, only = sys.argv[1:], None
    if "--only" in args:
        i = args.index("--only")
        args, only = args[:i], args[i + 1].split(";")
    main([int(x) for x in args] or [4096, 65536], only)
