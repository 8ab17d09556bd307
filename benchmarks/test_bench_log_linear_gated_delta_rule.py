"""Time vs sequence length of the log-linear Gated DeltaNet kernels (CUDA only).

bf16, H = 16, K = V = 128, 32K tokens per batch (B = 32768 / T), forward and forward+backward of
ours (the default launch plan, i.e. the fused Triton
kernels), "ours-torchlocal" (the batched PyTorch local part, at three lengths only), fla's
chunk_gated_delta_rule (use_qk_l2norm_in_kernel=True) and causal SDPA with torch's choice of backend,
flash and cuDNN (benchmarks/sdpa.py).  At most 5 rounds each.

    pytest benchmarks/test_bench_log_linear_gated_delta_rule.py --benchmark-json=gdn.json
    python benchmarks/plot.py gdn.json   # time vs T per group
"""
import pytest
import torch
import torch.nn.functional as F
from sdpa import SDPA_OPS, backend_used, sdpa_causal

from fla_loglinear.levels import num_levels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

H, D, TOKENS = 16, 128, 32768
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
IMPLS = ["ours", "fla", *SDPA_OPS]
CASES = [(T, impl) for T in LENGTHS for impl in IMPLS] + [(T, "ours-torchlocal") for T in (4096, 16384, 65536)]


def make_inputs(impl, T):
    B = max(1, TOKENS // T)
    dev, dt = "cuda", torch.bfloat16
    if impl in SDPA_OPS:
        return [torch.randn(B, H, T, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3)]
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev, dtype=torch.float32)).requires_grad_(True)
    beta = torch.rand(B, T, H, device=dev, dtype=dt).requires_grad_(True)
    out = [q, k, v, g, beta]
    if impl.startswith("ours"):
        out.append(torch.rand(B, T, H, num_levels(T), device=dev, dtype=dt).requires_grad_(True))
    return out


def make_fn(impl):
    if impl.startswith("ours"):
        from fla_loglinear.ops.log_linear_gated_delta_rule import (
            chunk_log_linear_gated_delta_rule,
        )

        from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

        # "ours" takes the default launch plan; "ours-torchlocal" the PyTorch chunk-local part
        def plan(q, v):
            if impl != "ours-torchlocal":
                return None
            return plan_for(q.shape[-1], v.shape[-1], v.shape[0] * v.shape[2], v.dtype, v.device, local="torch")
        return lambda *x: chunk_log_linear_gated_delta_rule(*x, use_qk_l2norm_in_kernel=True, _plan=plan(x[0], x[2]))[0]
    if impl == "fla":
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        # fla 0.6.0 refuses its gated backward on Hopper (triton 3.6 miscompile); timed anyway
        chunk_o.IS_NVIDIA_HOPPER = False
        return lambda *x: chunk_gated_delta_rule(*x, use_qk_l2norm_in_kernel=True)[0]
    if impl in SDPA_OPS:
        return sdpa_causal(impl)
    raise ValueError(impl)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("T,impl", CASES)
def test_bench_log_linear_gated_delta_rule(benchmark, T, impl, mode):
    inputs = make_inputs(impl, T)
    backend = backend_used(impl, *inputs) if impl in SDPA_OPS else None
    fn = make_fn(impl)
    do = torch.randn_like(fn(*inputs))

    def run():
        if mode == "fwd":
            with torch.no_grad():
                fn(*inputs)
        else:
            fn(*inputs).backward(do)
        torch.cuda.synchronize()

    run()  # compile / autotune outside the timing
    benchmark.group = f"gated_delta_rule {mode}"
    benchmark.extra_info.update(T=T, B=max(1, TOKENS // T), H=H, K=D, V=D, impl=impl, op=impl, mode=mode,
                                dtype="bfloat16")
    if impl == "ours":
        from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

        q, v = inputs[0], inputs[2]
        benchmark.extra_info["local"] = plan_for(q.shape[-1], v.shape[-1], v.shape[0] * v.shape[2], v.dtype,
                                                 v.device).local
    if impl == "fla":
        benchmark.extra_info["fla_hopper_bwd_guard_disabled"] = True
    if backend is not None:
        benchmark.extra_info["sdpa_backend"] = backend
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    del inputs, do
    torch.cuda.empty_cache()
