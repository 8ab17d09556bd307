"""Speed of scalar-gated log-linear attention against its baselines (CUDA only).

bf16, H = 16, K = V = 128, 32K tokens per batch (B = 32768 / T); forward and forward+backward of:
ours (chunk_log_linear_attn), fla's chunk_simple_gla (the linear parent), causal SDPA (torch's
choice of backend, flash and cuDNN: benchmarks/sdpa.py; up to 64K) and fla's chunk_log_linear_attn
(up to 16K: ~70 ms per fwd+bwd there); plus one decode step (fused_recurrent) against fla's
fused_recurrent_simple_gla at position 100,000.
Ours and chunk_simple_gla run at every T first, then SDPA, then fla's log-linear op, so a run
cut short keeps the main comparison; benchmarks/conftest.py writes each result as it finishes.
Ours gets L = num_levels(64K) lambdas at every T (levels past num_levels(T) are never read) so its
kernels compile once for all T; fla's op gets the L it requires.  One untimed warmup round (compiles, autotunes), then 5 timed rounds
(3 for fla's chunk_log_linear_attn).

Run:  BENCH_JSONL=out.jsonl pytest benchmarks/test_bench_log_linear_attn.py --benchmark-json out.json
Plot: python benchmarks/plot.py out.json out.png   (falls back to out.jsonl; prints a markdown table)
"""
import pytest
import torch
import torch.nn.functional as F
from sdpa import SDPA_OPS, backend_used, sdpa_causal

from fla_loglinear.levels import num_levels
from fla_loglinear.state import FenwickState

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="benchmarks need CUDA")

TOKENS, H, K, V = 32768, 16, 128, 128
T_VALUES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
# Run order: ours and chunk_simple_gla at every T first, then SDPA, then fla's slow log-linear op,
# so a run cut short still has the main comparison at every T.
PHASES = [("ours", "fla_simple_gla"), SDPA_OPS, ("fla_log_linear",)]
MAX_T = {"fla_log_linear": 16384}
ROUNDS = {"fla_log_linear": 3}
L_OURS = num_levels(max(T_VALUES))
CASES = [(T, op, mode) for ops in PHASES for T in T_VALUES for op in ops if T <= MAX_T.get(op, T)
         for mode in ("fwd", "fwdbwd")]


def make(T, L, lam_dtype=torch.float32):
    B = max(1, TOKENS // T)
    dev, bf = "cuda", torch.bfloat16
    q, k, v = (torch.randn(B, T, H, d, device=dev, dtype=bf) for d in (K, K, V))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3.0)
    lam = (torch.rand(B, T, H, L, device=dev) + 0.5).to(lam_dtype)
    return q, k, v, g, lam


def op_fn(op, T):
    """(callable returning the output, leaves needing grad) for one op at length T."""
    if op == "ours":
        from fla_loglinear.ops.log_linear_attn import chunk_log_linear_attn
        q, k, v, g, lam = make(T, L_OURS)
        return (lambda: chunk_log_linear_attn(q, k, v, g, lam)[0]), (q, k, v, g, lam), {"L": L_OURS}
    if op == "fla_simple_gla":
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.simple_gla import chunk_simple_gla
        # fla refuses its own gated backward on Hopper with triton < 3.7.1 (miscompiled there);
        # we time it anyway, as an upper bound on what that backward costs.
        chunk_o.IS_NVIDIA_HOPPER = False
        q, k, v, g, _ = make(T, 1)
        return (lambda: chunk_simple_gla(q, k, v, g, scale=K ** -0.5)[0]), (q, k, v, g), {
            "note": "fla.ops.common.chunk_o.IS_NVIDIA_HOPPER forced False to time its backward"}
    if op == "fla_log_linear":
        from fla.ops.log_linear_attn import chunk_log_linear_attn as fla_ll
        # bf16 level_scales: fp32 ones fail to compile on triton 3.6
        q, k, v, g, lam = make(T, num_levels(T), lam_dtype=torch.bfloat16)
        return (lambda: fla_ll(q, k, v, g, lam, scale=K ** -0.5)[0]), (q, k, v, g, lam), {"L": num_levels(T)}
    if op in SDPA_OPS:
        q, k, v, _, _ = make(T, 1)
        q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        f = sdpa_causal(op)
        return (lambda: f(q, k, v)), (q, k, v), {"sdpa_backend": backend_used(op, q, k, v)}
    raise ValueError(op)


def timed(benchmark, fn, rounds):
    def target():
        fn()
        torch.cuda.synchronize()
    # the warmup round compiles and autotunes, untimed
    benchmark.pedantic(target, rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("T,op,mode", CASES)
def test_bench_chunk(benchmark, T, op, mode):
    f, leaves, info = op_fn(op, T)
    if mode == "fwdbwd":
        for x in leaves:
            x.requires_grad_(True)
        do = torch.randn_like(f())

        def run():
            for x in leaves:
                x.grad = None
            f().backward(do)
    else:
        def run():
            with torch.no_grad():
                f()
    group = f"log_linear_attn {mode}"
    benchmark.group = group
    benchmark.extra_info.update(dict(T=T, B=max(1, TOKENS // T), op=op, mode=mode, group=group, tokens=TOKENS,
                                     H=H, K=K, V=V, dtype="bfloat16", **info))
    timed(benchmark, run, rounds=ROUNDS.get(op, 5))


@pytest.mark.parametrize("op", ["ours", "ours_new_state", "fla_simple_gla"])
def test_bench_decode(benchmark, op):
    """``ours`` decodes in place, as the layers do (the position is reset every call, so every call
    is the step at 100,000); ``ours_new_state`` writes a new state, as fla's step does."""
    B, pos = 64, 100_000
    dev, bf = "cuda", torch.bfloat16
    q, k, v = (torch.randn(B, 1, H, d, device=dev, dtype=bf) for d in (K, K, V))
    g = F.logsigmoid(torch.randn(B, 1, H, device=dev) + 3.0)
    if op != "fla_simple_gla":
        from fla_loglinear.ops.log_linear_attn import fused_recurrent_log_linear_attn
        L = num_levels(2 * pos)
        lam = torch.rand(B, 1, H, L, device=dev) + 0.5
        st = FenwickState(torch.randn(B, H, L, K, V, device=dev),
                          torch.full((B,), pos, device=dev, dtype=torch.int64))

        def run():
            if op == "ours":
                st.positions.fill_(pos)
                fused_recurrent_log_linear_attn(q, k, v, g, lam, st, True, inplace_final_state=True)
            else:
                fused_recurrent_log_linear_attn(q, k, v, g, lam, st, True)
    else:
        from fla.ops.simple_gla import fused_recurrent_simple_gla
        h0 = torch.randn(B, H, K, V, device=dev)

        def run():
            fused_recurrent_simple_gla(q, k, v, g, scale=K ** -0.5, initial_state=h0, output_final_state=True)
    benchmark.group = "log_linear_attn decode B=64 pos=100000"
    benchmark.extra_info.update(dict(T=1, op=op, mode="decode", group="log_linear_attn decode", B=B, position=pos))
    with torch.no_grad():
        timed(benchmark, run, rounds=20)
