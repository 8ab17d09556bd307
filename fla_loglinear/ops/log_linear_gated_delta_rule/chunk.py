"""Chunked log-linear gated delta rule (training / prefill), a drop-in for fla's chunk_gated_delta_rule."""
from __future__ import annotations

import dataclasses
import os

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter import chunk_inter
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local import chunk_local_fwd, from_tokens, make_layout
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local_fused import chunk_local_fused_fwd
from fla_loglinear.ops.log_linear_gated_delta_rule.gate import parse_options, preprocess_inputs
from fla_loglinear.ops.log_linear_gated_delta_rule.naive import naive_chunk_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.pending import settle_pending
from fla_loglinear.ops.triton_env import interpreter_on, use_triton
from fla_loglinear.state import FenwickState

__all__ = ["chunk_log_linear_gated_delta_rule"]

# the interpreter is only ever on when the tests ask for it (no GPU)
# the state slots are tracked as bits of one int64
MAX_LEVELS = 62
# the slot scan and the decode kernel hold a whole key dimension in one block
MAX_K = 256
# Which implementation does the chunk-local (WY) work on CUDA: "triton" (the fused kernels of
# chunk_local_fused.py with their hand-written backward; the default since they passed every H200
# test at head dims 64-256, results run8) or "torch" (batched PyTorch of chunk_local.py, autograd
# backward; about 2x slower, kept as the fallback and the CPU path).  Head dims below 32 always take
# "torch".  Read once from FLA_LOGLINEAR_GDN_LOCAL; tests and benchmarks may assign this attribute
# or pass the private option ``_gdn_local``.
LOCAL_IMPLS = ("triton", "torch")
LOCAL_IMPL = os.environ.get("FLA_LOGLINEAR_GDN_LOCAL", "triton")
if LOCAL_IMPL not in LOCAL_IMPLS:
    raise ValueError(f"FLA_LOGLINEAR_GDN_LOCAL must be one of {LOCAL_IMPLS}, got {LOCAL_IMPL!r}")


def state_in(initial_state: FenwickState | None, state_v_first: bool) -> FenwickState | None:
    """Our kernels keep slots as ``[K, V]``; fla's layer may hand us ``[V, K]`` (state_v_first)."""
    if initial_state is None or not state_v_first or not isinstance(initial_state, FenwickState):
        return initial_state
    return dataclasses.replace(initial_state, states=initial_state.states.transpose(-1, -2))


def state_out(state: FenwickState | None, state_v_first: bool) -> FenwickState | None:
    if state is None or not state_v_first:
        return state
    return FenwickState(state.states.transpose(-1, -2).contiguous(), state.positions)


def use_kernels(q: torch.Tensor, force_triton: bool, K: int, L: int) -> bool:
    """Whether a call runs the Triton kernels (CUDA, or forced under the interpreter); if it does,
    what they support is checked here, before any work."""
    if not use_triton(q, force_triton):
        return False
    if L > MAX_LEVELS:
        raise ValueError(f"level_scales has L = {L} levels; the Triton kernels support L <= {MAX_LEVELS}")
    if K > MAX_K:
        raise ValueError(f"q and k have head dim K = {K}; the Triton kernels support K <= {MAX_K} (any V)")
    return True


def use_fused_local(q: torch.Tensor, v: torch.Tensor, impl: str | None) -> bool:
    """Whether the fused local kernels run: on CUDA by default (``LOCAL_IMPL``), under the interpreter
    only when ``_gdn_local="triton"`` asks."""
    if impl is not None and impl not in LOCAL_IMPLS:
        raise ValueError(f"_gdn_local must be one of {LOCAL_IMPLS}, got {impl!r}")
    # compiled and checked for head dims 32..256 only
    if v.dtype not in (torch.bfloat16, torch.float16, torch.float32) or min(q.shape[-1], v.shape[-1]) < 32:
        return False
    if impl is None:
        return v.is_cuda and LOCAL_IMPL == "triton"
    return impl == "triton" and (v.is_cuda or interpreter_on())


def chunk_log_linear_gated_delta_rule_fwd(q, k, v, g, beta, level_scales, scale, initial_state, output_final_state,
                                          cu_seqlens, N, local_impl=None):
    """Triton path on already-preprocessed inputs; differentiable."""
    B, T, H, K = q.shape
    HV = v.shape[2]
    L = level_scales.shape[-1]
    if HV != H:
        q = q.repeat_interleave(HV // H, dim=2)
        k = k.repeat_interleave(HV // H, dim=2)
    positions = None if initial_state is None else initial_state.positions.tolist()
    layout = make_layout(B, T, cu_seqlens, positions, q.device)
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    local = chunk_local_fused_fwd if use_fused_local(q, v, local_impl) else chunk_local_fwd
    o_intra, qe, w, kd, u, gamma, omega, end_keys = local(q, k, v, g, beta, level_scales, scale, layout, acc)
    # the sweep's matmuls run in the input precision, as fla's chunk kernels do
    mm_dtype = v.dtype if v.dtype in (torch.bfloat16, torch.float16) else torch.float32
    qe, w, kd, u = (x.to(mm_dtype) for x in (qe, w, kd, u))
    h0 = None if initial_state is None else initial_state.without_empty_slots().states
    meta = (layout.chunk_offsets, layout.pos_start, layout.pos_end, N, L)
    o, ht = chunk_inter(qe, w, kd, u, gamma.float(), omega.float(), o_intra, h0, meta, v.dtype)
    o = from_tokens(o, layout, B, T)
    if end_keys is not None:
        ht = ht + end_keys.float()
    final = FenwickState(ht, layout.pos_end.clone()) if output_final_state else None
    return o, final


def chunk_log_linear_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    level_scales: torch.Tensor,
    scale: float | None = None,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, FenwickState | None]:
    r"""Log-linear Gated DeltaNet, chunked: fla's ``chunk_gated_delta_rule`` plus ``level_scales``.

    Query ``t`` reads key ``s <= t`` through ``lambda_t[min(level(t, s), L - 1)]`` and the gated
    delta-rule transitions ``A_r = e^{g_r} (I - beta_r k_r k_r^T)`` of ``r = s + 1 .. t``.
    With every lambda equal to 1 this is fla's gated delta rule.

    Args:
        q, k: ``[B, T, H, K]``.
        v: ``[B, T, HV, V]``, ``HV % H == 0`` (value head ``h`` uses q/k head ``h // (HV // H)``).
        g: ``[B, T, HV]`` log decays, or raw gate inputs with ``use_gate_in_kernel=True``.
        beta: ``[B, T, HV]`` write strengths, or logits with ``use_beta_sigmoid_in_kernel=True``.
        level_scales: ``[B, T, HV, L]`` per-query lambdas; level ``l`` uses ``lambda[min(l, L-1)]``.
        scale: query scale; ``None`` means ``K ** -0.5``.
        initial_state: :class:`FenwickState` with ``states [N, HV, L, K, V]`` (``[N, HV, L, V, K]``
            with ``state_v_first``) and ``positions [N]``; the sequences continue from there (transitions
            that in-place decoding left pending in it are applied first, see :mod:`.pending`).
        output_final_state: also return the FenwickState after the last token.
        use_qk_l2norm_in_kernel: L2-normalise q and k first.
        cu_seqlens: ``[N + 1]`` packed offsets (``B == 1``).
        **kwargs: fla's options ``use_beta_sigmoid_in_kernel``, ``allow_neg_eigval``,
            ``use_gate_in_kernel`` with ``A_log [HV]`` and ``dt_bias [HV]``, ``state_v_first``,
            ``chunk_size`` (64 only) and ``cu_seqlens_cpu`` (ignored); anything else raises.

    Returns:
        ``o [B, T, HV, V]`` in ``v.dtype`` and the final FenwickState (or ``None``).

    CUDA inputs run the Triton kernels; CPU inputs run the PyTorch reference
    ``naive_chunk_log_linear_gated_delta_rule``.  The sequence start positions are read on the
    host once (like fla's varlen chunk indices).  The chunk-local WY part runs in fused Triton kernels
    with a hand-written backward (:mod:`.chunk_local_fused`); ``FLA_LOGLINEAR_GDN_LOCAL=torch`` (and
    head dims below 32) select batched PyTorch instead (:mod:`.chunk_local`, autograd).  The
    sequential sweep over the Fenwick slots is a Triton kernel (:mod:`.chunk_inter`).  The option
    preprocessing is PyTorch.
    """
    if torch.compiler.is_compiling():  # one custom op in the graph (ops/library.py)
        from fla_loglinear.ops.library import compiled_chunk_log_linear_gated_delta_rule
        return compiled_chunk_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale, initial_state,
                                                          output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
                                                          kwargs)
    op = "chunk_log_linear_gated_delta_rule"
    opts = parse_options(op, use_qk_l2norm_in_kernel, kwargs)
    state = state_in(initial_state, opts.state_v_first)
    B, T, H, HV, K, V, L, N = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, initial_state=state, cu_seqlens=cu_seqlens, pending=True
    )
    if scale is None:
        scale = K ** -0.5
    triton_path = use_kernels(q, opts.force_triton, K, L)
    state = settle_pending(state)
    q, k, g, beta = preprocess_inputs(q, k, g, beta, opts)
    if triton_path:
        o, final = chunk_log_linear_gated_delta_rule_fwd(
            q, k, v, g, beta, level_scales, scale, state, output_final_state, cu_seqlens, N, opts.local_impl
        )
    else:
        o, final = naive_chunk_log_linear_gated_delta_rule(
            q, k, v, g, beta, level_scales, scale=scale, initial_state=state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    return o, state_out(final, opts.state_v_first)
