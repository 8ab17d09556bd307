"""Where the time of the chunked log-linear Gated DeltaNet goes, stage by stage (CUDA only, < 60 s).

    python benchmarks/profile_gdn.py            # T = 4096 and 32768, 32K tokens per batch
    python benchmarks/profile_gdn.py 65536      # other lengths

bf16, H = 16, K = V = 128, B = 32768 / T (the shapes of benchmarks/test_bench_log_linear_gated_delta_rule.py).
Each stage is timed alone with triton.testing.do_bench on inputs prepared beforehand, so the stage
times add up to roughly the op's time; the whole op and fla's chunk_gated_delta_rule (and its state
pass chunk_gated_delta_rule_fwd_h, the kernel shaped like our slot scan) are printed for scale.
A stage that fails prints its error and the script goes on.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
import triton

from fla_loglinear.levels import num_levels
from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_bwd import chunk_inter_bwd
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_fwd import chunk_inter_fwd, chunk_inter_replay
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local import chunk_local_fwd
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk import local_part_bwd, local_part_fwd
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local_fused import wy_prep
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import from_tokens, make_layout, pad_tokens
from fla_loglinear.ops.log_linear_gated_delta_rule.gate import _l2norm
from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

H, D, TOKENS = 16, 128, 32768
DEVICE = "cuda"


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=25)


def row(name: str, fn) -> float | None:
    try:
        ms = bench(fn)
    except Exception as e:  # noqa: BLE001 - a broken stage must not hide the others
        print(f"  {name:<44s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None
    print(f"  {name:<44s} {ms:8.3f} ms")
    return ms


def profile(T: int) -> None:
    B = max(1, TOKENS // T)
    L = num_levels(T)
    dev, dt = DEVICE, torch.bfloat16
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, device=dev))
    beta = torch.rand(B, T, H, device=dev, dtype=dt)
    lam = torch.rand(B, T, H, L, device=dev, dtype=dt)
    scale = D ** -0.5
    print(f"\nT = {T}, B = {B}, H = {H}, K = V = {D}, L = {L}, bf16")

    leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, beta, lam)]
    plans = {local: plan_for(D, D, B * H, dt, dev, local=local) for local in ("triton", "torch")}
    plan = plans["triton"]
    do = torch.randn_like(v)

    def whole_fwd(local):
        with torch.no_grad():
            chunk_log_linear_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True, _plan=plans[local])

    def whole_fwdbwd(local):
        o, _ = chunk_log_linear_gated_delta_rule(*leaves, use_qk_l2norm_in_kernel=True, _plan=plans[local])
        o.backward(do)

    print(" whole op")
    for local in ("triton", "torch"):
        row(f"ours fwd (local: {local})", lambda: whole_fwd(local))
        row(f"ours fwd+bwd (local: {local})", lambda: whole_fwdbwd(local))

    print(" forward stages")
    qn, kn = _l2norm(q), _l2norm(k)
    row("l2norm q, k (PyTorch)", lambda: (_l2norm(q), _l2norm(k)))
    row("make_layout (cached)", lambda: make_layout(B, T, None, None, q.device))
    layout = make_layout(B, T, None, None, q.device)
    row("chunk_local_fwd (PyTorch, fp32)",
        lambda: chunk_local_fwd(qn, kn, v, g, beta, lam, scale, layout, torch.float32))
    row("chunk_local_fused_fwd (fla WY + Triton)",
        lambda: local_part_fwd(qn, kn, v, g, beta, lam, scale, layout, True))
    pk, pg, pb = pad_tokens(kn, layout), pad_tokens(g, layout), pad_tokens(beta, layout)
    row("  of which wy_prep (fla cumsum, kkt, solve_tril)", lambda: wy_prep(pk[None], pg[None], pb[None]))
    o_intra, qe, w, kd, u, gamma, omega, end_keys = chunk_local_fwd(qn, kn, v, g, beta, lam, scale, layout,
                                                                    torch.float32)
    qe, w, kd, u = (x.to(dt) for x in (qe, w, kd, u))
    gamma, omega = gamma.float().contiguous(), omega.float().contiguous()
    meta = (layout.chunk_offsets, layout.pos_start, layout.pos_end, B, L)
    row("chunk_inter_fwd (Triton slot scan, adds o_intra)",
        lambda: chunk_inter_fwd(qe, w, kd, u, gamma, omega, None, meta, o_intra, dt, plan))
    hs = torch.empty(layout.NC, H, L, D, D, dtype=dt, device=dev)
    row("chunk_inter_replay (the bwd's forward replay, storing slots)",
        lambda: chunk_inter_replay(qe, w, kd, u, gamma, omega, None, meta, hs, plan))
    o, _, chunk_meta = chunk_inter_fwd(qe, w, kd, u, gamma, omega, None, meta, o_intra, dt, plan)
    row("from_tokens(o)", lambda: from_tokens(o, layout, B, T))

    print(" backward stages")
    do_rows = torch.randn(layout.NC * 64, H, D, device=dev, dtype=dt)
    row("chunk_inter_bwd (replay beside the reverse scan, per-chunk grads)",
        lambda: chunk_inter_bwd(qe, w, kd, u, gamma, omega, None, do_rows, None, meta, chunk_meta, plan))
    loc_in = [x.detach().clone().requires_grad_(True) for x in (qn, kn, v, g, beta, lam)]
    outs = chunk_local_fwd(*loc_in, scale, layout, torch.float32)
    diff = [x for x in outs if x.requires_grad]
    gouts = [torch.randn_like(x) for x in diff]
    row("chunk_local autograd bwd (PyTorch)",
        lambda: torch.autograd.grad(diff, loc_in, gouts, retain_graph=True, allow_unused=True))
    fouts, fres = local_part_fwd(qn, kn, v, g, beta, lam, scale, layout, True)
    fgouts = [None if x is None else torch.randn_like(x) for x in fouts]
    row("chunk_local_fused bwd (Triton)", lambda: local_part_bwd(fres, fgouts, scale, layout, True, B, T))

    print(" fla for scale")
    try:
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        chunk_o.IS_NVIDIA_HOPPER = False
        fl = [x.clone().requires_grad_(True) for x in (q, k, v, g, beta)]

        def fla_fwd():
            with torch.no_grad():
                chunk_gated_delta_rule(*fl, use_qk_l2norm_in_kernel=True)

        def fla_fwdbwd():
            chunk_gated_delta_rule(*fl, use_qk_l2norm_in_kernel=True)[0].backward(do)

        row("fla chunk_gated_delta_rule fwd", fla_fwd)
        row("fla chunk_gated_delta_rule fwd+bwd", fla_fwdbwd)
        wf, uf = w.transpose(1, 2).reshape(1, -1, H, D), u.transpose(1, 2).reshape(1, -1, H, D)
        kf = kd.transpose(1, 2).reshape(1, -1, H, D)
        row("fla chunk_gated_delta_rule_fwd_h (1 state)",
            lambda: chunk_gated_delta_rule_fwd_h(k=kf, w=wf, u=uf, g=None))
    except Exception as e:  # noqa: BLE001
        print(f"  fla FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("profile_gdn.py needs a CUDA GPU")
    lengths = [int(a) for a in sys.argv[1:]] or [4096, 32768]
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    for T in lengths:
        profile(T)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
