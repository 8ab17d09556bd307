"""The package's main job on random data: both variants, chunked and token by token."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fla_loglinear.levels import num_levels


def _report(name: str, o_chunk: torch.Tensor, o_rec: torch.Tensor, seconds: float) -> float:
    err = (o_chunk - o_rec).abs().max().item() / o_rec.abs().max().item()
    print(f"  {name:<28} output {tuple(o_chunk.shape)}  chunked vs token-by-token rel. err {err:.2e}  ({seconds:.2f} s)")
    return err


def run_demo(seed: int = 0, B: int = 2, T: int = 300, H: int = 4, K: int = 32, V: int = 32) -> int:
    from fla_loglinear.ops.log_linear_attn import naive_chunk_log_linear_attn, naive_recurrent_log_linear_attn
    from fla_loglinear.ops.log_linear_gated_delta_rule import (
        naive_chunk_log_linear_gated_delta_rule,
        naive_recurrent_log_linear_gated_delta_rule,
    )

    torch.manual_seed(seed)
    L = num_levels(T)
    print(f"log-linear attention on random data: B={B}, T={T}, H={H}, K={K}, V={V}, {L} Fenwick levels")
    q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
    v = torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H) + 3)
    beta = torch.rand(B, T, H)
    lam = F.softplus(torch.randn(B, T, H, L))
    worst = 0.0

    t0 = time.perf_counter()
    o_c, s_c = naive_chunk_log_linear_attn(q, k, v, g, lam, output_final_state=True)
    t1 = time.perf_counter()
    o_r, s_r = naive_recurrent_log_linear_attn(q, k, v, g, lam, output_final_state=True)
    worst = max(worst, _report("scalar-gated (Mamba-2)", o_c, o_r, t1 - t0))
    print(f"    final state: {tuple(s_c.states.shape)} per-level states at positions {s_c.positions.tolist()}")

    t0 = time.perf_counter()
    o_c, s_c = naive_chunk_log_linear_gated_delta_rule(q, k, v, g, beta, lam, output_final_state=True)
    t1 = time.perf_counter()
    o_r, s_r = naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, output_final_state=True)
    worst = max(worst, _report("gated delta rule (GDN)", o_c, o_r, t1 - t0))
    print(f"    final state: {tuple(s_c.states.shape)} per-level states at positions {s_c.positions.tolist()}")

    ok = worst < 1e-4
    print("chunked and token-by-token forms agree" if ok else "MISMATCH between the chunked and token-by-token forms")
    return 0 if ok else 1
