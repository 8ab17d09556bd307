"""GPU kernel time vs wall time of one decode step (B=64, pos=100000, H=16, K=V=128): ours in place, ours new state, fla."""
import sys, time
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from fla_loglinear.levels import num_levels
from fla_loglinear.state import FenwickState
from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent_log_linear_gated_delta_rule
from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

tag = sys.argv[1]
B, POS, H, K, V = 64, 100_000, 16, 128, 128
dev, bf = "cuda", torch.bfloat16
q = torch.randn(B, 1, H, K, device=dev, dtype=bf)
k = F.normalize(torch.randn(B, 1, H, K, device=dev), dim=-1).to(bf)
v = torch.randn(B, 1, H, V, device=dev, dtype=bf)
g = F.logsigmoid(torch.randn(B, 1, H, device=dev) + 3.0)
beta = torch.rand(B, 1, H, device=dev).to(bf)
L = num_levels(2 * POS)
lam = torch.rand(B, 1, H, L, device=dev) + 0.5
st = FenwickState(torch.randn(B, H, L, K, V, device=dev) * 0.1, torch.full((B,), POS, device=dev, dtype=torch.int64))
h0 = torch.randn(B, H, K, V, device=dev) * 0.1
steps = {
    "ours_inplace": lambda: (st.positions.fill_(POS), fused_recurrent_log_linear_gated_delta_rule(
        q, k, v, g, beta, lam, initial_state=st, output_final_state=True, inplace_final_state=True)),
    "ours_new_state": lambda: fused_recurrent_log_linear_gated_delta_rule(
        q, k, v, g, beta, lam, initial_state=st, output_final_state=True),
    "fla": lambda: fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=K ** -0.5, initial_state=h0,
                                                    output_final_state=True),
}
n = 50
with torch.no_grad():
    for name, fn in steps.items():
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for _ in range(n):
            fn()
        cpu = (time.perf_counter() - t) / n * 1e6  # launch rate without waiting (CPU-bound if > GPU time)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
        kern = {}
        for e in prof.key_averages():
            if e.device_type.name == "CUDA" and getattr(e, "self_device_time_total", 0) > 0:
                kern[e.key] = e.self_device_time_total / n
        gpu = sum(kern.values())
        top = ", ".join(f"{k[:40]} {v:.1f}" for k, v in sorted(kern.items(), key=lambda x: -x[1])[:4])
        print(f"{tag} {name:<15s} wall {wall:7.1f} us  host-issue {cpu:7.1f} us  gpu {gpu:7.1f} us  [{top}]", flush=True)
