"""Kernel-by-kernel GPU time of our chunked ops' forward + backward (CUDA only), via torch.profiler.

    python benchmarks/profile_ops.py scalar 4096 16384 65536
    python benchmarks/profile_ops.py gdn 4096
    python benchmarks/profile_ops.py gdn-torch 4096      # GDN with the PyTorch local part

bf16, H = 16, K = V = 128, B = 32768 / T: the shapes of the benchmarks.  Prints, per length, the
CUDA kernels of 5 profiled forward + backward passes (after warm-up) sorted by their total time,
averaged per pass, so the stage to optimise next is the first line.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from fla_loglinear.levels import num_levels
from fla_loglinear.ops import chunk_log_linear_attn, chunk_log_linear_gated_delta_rule

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


def make_step(op: str, T: int):
    leaves, do = make_inputs(op, T)
    if op == "scalar":
        return lambda: chunk_log_linear_attn(*leaves)[0].backward(do)
    local = "torch" if op == "gdn-torch" else "triton"
    return lambda: chunk_log_linear_gated_delta_rule(
        *leaves, use_qk_l2norm_in_kernel=True, _gdn_local=local)[0].backward(do)


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
    main(sys.argv[1], [int(x) for x in sys.argv[2:]] or [4096, 16384])
