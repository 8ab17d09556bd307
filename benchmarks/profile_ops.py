"""Kernel-by-kernel GPU time of our chunked ops' forward + backward (CUDA only), via torch.profiler.

    python benchmarks/profile_ops.py scalar 4096 16384 65536
    python benchmarks/profile_ops.py gdn 4096
    python benchmarks/profile_ops.py gdn-torch 4096      # GDN with the PyTorch local part
    python benchmarks/profile_ops.py gdn 4096 --host     # host side: launch time vs GPU time, syncs

bf16, H = 16, K = V = 128, B = 32768 / T: the shapes of the benchmarks.  Prints, per length, the
CUDA kernels of 5 profiled forward + backward passes (after warm-up) sorted by their total time,
averaged per pass, so the stage to optimise next is the first line.
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from fla_loglinear.levels import num_levels
from fla_loglinear.ops import chunk_log_linear_attn, chunk_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

H, D, TOKENS, STEPS = 16, 128, 32768, 5


def make_inputs(op: str, T: int):
    """The benchmark shape's inputs of ``op`` (requiring grad, in the op's argument order) and an
    output gradient."""
    B, L = max(1, TOKENS // T), num_levels(T)
    dt, dev = torch.bfloat16, "cuda"
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev))
    lam = torch.rand(B, T, H, L, device=dev, dtype=dt)
    do = torch.randn_like(v)
    if op == "scalar":
        return [x.requires_grad_(True) for x in (q, k, v, g, lam)], do
    beta = torch.rand(B, T, H, device=dev, dtype=dt)
    return [x.requires_grad_(True) for x in (q, k, v, g, beta, lam)], do


def make_step(op: str, T: int, forward_only: bool = False, leaves=None, do=None, plan=None):
    """A fwd+bwd of ``op`` (or its forward alone, which still records the graph) as a no-argument call;
    ``plan``: the GDN op's launch plan (``None``: its default, with the PyTorch local part for gdn-torch)."""
    if leaves is None:
        leaves, do = make_inputs(op, T)
    if op == "scalar":
        fn = lambda: chunk_log_linear_attn(*leaves)[0]
    else:
        if plan is None and op == "gdn-torch":
            q, v = leaves[0], leaves[2]
            plan = plan_for(q.shape[-1], v.shape[-1], v.shape[0] * v.shape[2], v.dtype, v.device, local="torch")
        fn = lambda: chunk_log_linear_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True, _plan=plan)[0]
    return fn if forward_only else lambda: fn().backward(do)


def host_profile(op: str, T: int) -> None:
    """Host time of a forward and of a fwd+bwd (until the call returns, no sync) against their wall time
    (synced), and the host calls with the most self time: when the host time reaches the wall time, the
    op is launch-bound and kernel work alone will not speed it up."""
    leaves, do = make_inputs(op, T)
    forward = make_step(op, T, forward_only=True, leaves=leaves)

    def fwd():  # as the benchmark times it
        with torch.no_grad():
            forward()
    step = make_step(op, T, leaves=leaves, do=do)
    for name, fn in (("fwd", fwd), ("fwd+bwd", step)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        host, wall = [], []
        for _ in range(STEPS):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            host.append(t1 - t0)
            wall.append(time.perf_counter() - t0)
        print(f"\n{op} {name} T = {T}: host {1e3 * min(host):.3f} ms, wall {1e3 * min(wall):.3f} ms (best of {STEPS})")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        launches = sum(e.count for e in rows if e.key in ("cuLaunchKernel", "cudaLaunchKernel", "cuLaunchKernelEx"))
        print(f"  {launches} kernel launches; host calls by self time:")
        for e in rows[:22]:
            print(f"  {e.self_cpu_time_total / 1e3:8.3f} ms  x{e.count:<4d} {e.key[:90]}")


def main(op: str, lengths: list[int]) -> None:
    for T in lengths:
        step = make_step(op, T)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step()
            torch.cuda.synchronize()
        rows = [e for e in prof.key_averages() if e.device_time_total > 0]
        rows.sort(key=lambda e: -e.device_time_total)
        total = sum(e.device_time_total for e in rows) / STEPS / 1e3
        print(f"\n{op} T = {T}, B = {max(1, TOKENS // T)}: {total:.3f} ms of kernels per fwd+bwd")
        for e in rows[:18]:
            print(f"  {e.device_time_total / STEPS / 1e3:8.3f} ms  x{e.count // STEPS:<4d} {e.key[:90]}")


if __name__ == "__main__":
    args = [a for a in sys.argv[2:] if a != "--host"]
    lengths = [int(x) for x in args] or [4096, 16384]
    if "--host" in sys.argv:
        for T in lengths:
            host_profile(sys.argv[1], T)
    else:
        main(sys.argv[1], lengths)
