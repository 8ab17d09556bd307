"""Chunked log-linear gated delta rule (training / prefill), a drop-in for fla's chunk_gated_delta_rule."""
from __future__ import annotations

import dataclasses

import torch
import triton

from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_bwd import chunk_inter_bwd
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_fwd import chunk_inter_fwd
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local import chunk_local_fwd, end_chunk_keys, partial_end_keep
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local_fused import chunk_local_fused_bwd, chunk_local_fused_fwd
from fla_loglinear.ops.log_linear_gated_delta_rule.gate import parse_options, preprocess_inputs
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import CHUNK_SIZE, from_tokens, make_layout, pad_tokens
from fla_loglinear.ops.log_linear_gated_delta_rule.naive import naive_chunk_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.pending import settle_pending
from fla_loglinear.ops.log_linear_gated_delta_rule.plan import GDNLaunchPlan, fused_local_supported, plan_for
from fla_loglinear.ops.triton_env import use_triton
from fla_loglinear.state import FenwickState

__all__ = [
    "chunk_log_linear_gated_delta_rule",
    "chunk_log_linear_gated_delta_rule_fwd",
    "chunk_log_linear_gated_delta_rule_bwd",
    "ChunkLogLinearGatedDeltaRuleFunction",
]

# the state slots are tracked as bits of one int64
MAX_LEVELS = 62
# the slot scan and the decode kernel hold a whole key dimension in one block
MAX_K = 256


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


def plan_for_call(q, v, NH: int, plan: GDNLaunchPlan | None) -> GDNLaunchPlan:
    """``plan`` checked against the call (``None``: :func:`.plan.plan_for` of its shapes and device)."""
    K, V = q.shape[-1], v.shape[-1]
    if plan is None:
        return plan_for(K, V, NH, v.dtype, q.device)
    if not isinstance(plan, GDNLaunchPlan):
        raise TypeError(f"_plan must be a GDNLaunchPlan (see plan_for), got {type(plan).__name__}")
    if plan.local == "triton" and not fused_local_supported(K, V, v.dtype):
        raise ValueError(f"_plan.local='triton' needs head dims >= 32 in bf16 / fp16 / fp32, got K = {K}, V = {V}, "
                         f"{v.dtype}; plan_for picks 'torch' there")
    return plan


def on_value_heads(q: torch.Tensor, k: torch.Tensor, HV: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q / k ``[B, T, H, K]`` as the kernels take them, on the ``HV`` value heads (value head ``h``
    reads q / k head ``h // (HV // H)``)."""
    if q.shape[2] == HV:
        return q, k
    return q.repeat_interleave(HV // q.shape[2], dim=2), k.repeat_interleave(HV // k.shape[2], dim=2)


def _mm_dtype(dtype: torch.dtype) -> torch.dtype:
    # the sweep's matmuls run in the input precision, as fla's chunk kernels do
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _local_torch(q, k, v, g, beta, level_scales, scale, layout):
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    o_intra, qe, w, kd, u, gamma, omega, end_keys = chunk_local_fwd(q, k, v, g, beta, level_scales, scale, layout, acc)
    qe, w, kd, u = (x.to(_mm_dtype(v.dtype)) for x in (qe, w, kd, u))
    return o_intra, qe, w, kd, u, gamma.float(), omega.float(), None if end_keys is None else end_keys.float()


def local_inputs(inputs, layout, fused: bool) -> tuple:
    """``(q, k, v, g, beta, level_scales)`` as the local part reads them and keeps them for its
    backward: padded token rows for the fused kernels, the ``[B, T, ...]`` tensors for PyTorch."""
    return tuple(pad_tokens(x, layout) for x in inputs) if fused else tuple(inputs)


def local_part_fwd(q, k, v, g, beta, level_scales, scale: float, layout, fused: bool):
    """The chunk-local part, no autograd: ``(o_intra, qe, w, kd, u, gamma, omega, end_keys)`` in the dtypes
    the sweep reads (``end_keys`` fp32 or ``None``, see :func:`.chunk_local.chunk_local_fwd`) and the
    residuals :func:`local_part_bwd` takes.  ``fused``: the fused kernels, else batched PyTorch."""
    if not fused:
        outs = _local_torch(q, k, v, g, beta, level_scales, scale, layout)
        return outs, (q, k, v, g, beta, level_scales, None, None, None)
    qp, kp, vp, gp, bp, lp = local_inputs((q, k, v, g, beta, level_scales), layout, fused)
    (o_intra, qe, w, kd, u, gam, om), wy = chunk_local_fused_fwd(qp, kp, vp, gp, bp, lp, scale, layout)
    end_keys, keep = end_chunk_keys(kp, vp, gp, bp, lp.shape[-1], layout, torch.float32)
    if keep is not None:
        u = u * keep[:, None, None, None].to(u.dtype)
    return (o_intra, qe, w, kd, u, gam, om, end_keys), (qp, kp, vp, gp, bp, lp, *wy)


def local_part_bwd(residuals, douts, scale: float, layout, fused: bool, B: int, T: int):
    """Gradients of :func:`local_part_fwd`'s outputs (``douts``, ``None`` for no gradient) ->
    ``(dq, dk, dv, dg, dbeta, dlevel_scales)`` ``[B, T, ...]`` in the inputs' dtypes.  The PyTorch
    part is recomputed here and differentiated by autograd."""
    q, k, v, g, beta, lam, G2, A, a_off = residuals
    if not fused:
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in (q, k, v, g, beta, lam)]
            outs = _local_torch(*leaves, scale, layout)
            pairs = [(x, dx.to(x.dtype)) for x, dx in zip(outs, douts) if x is not None and dx is not None]
            return torch.autograd.grad([x for x, _ in pairs], leaves, [dx for _, dx in pairs], allow_unused=True)
    do, dqe, dw, dkd, du, dgam, dom, dend = douts
    keep = partial_end_keep(layout, torch.float32)
    if keep is not None:
        du = du * keep[:, None, None, None].to(du.dtype)
    dq, dk, dv, dg, db, dlam = chunk_local_fused_bwd(q, k, v, G2, beta, A, lam, a_off, do, dqe, dw, dkd, du, dgam,
                                                     dom, scale, layout)
    dg, db, dlam = dg.to(g.dtype), db.to(beta.dtype), dlam.to(lam.dtype)
    if dend is not None and layout.partial_end:
        # the last chunks' keys reach the final state through end_chunk_keys (PyTorch): autograd over it
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(True) for x in (k, v, g, beta)]
            end_keys, _ = end_chunk_keys(*leaves, lam.shape[-1], layout, torch.float32)
            ek, ev, eg, eb = torch.autograd.grad(end_keys, leaves, dend)
        dk, dv, dg, db = dk + ek, dv + ev, dg + eg, db + eb
    return tuple(from_tokens(x, layout, B, T) for x in (dq, dk, dv, dg, db, dlam))


def chunk_log_linear_gated_delta_rule_fwd(q, k, v, g, beta, level_scales, scale: float, h0: torch.Tensor | None,
                                          seq_offsets: list[int] | None, seq_starts: list[int] | None,
                                          plan: GDNLaunchPlan | None = None):
    """The Triton path's forward on preprocessed inputs (q / k already on the value heads), no autograd.

    Args:
        q, k ``[B, T, HV, K]``, v ``[B, T, HV, V]``, g, beta ``[B, T, HV]``, level_scales ``[B, T, HV, L]``.
        h0: ``[N, HV, L, K, V]`` initial slots with their empty slots zeroed, or ``None``.
        seq_offsets: ``cu_seqlens`` as host ints (``None``: ``B`` sequences of ``T``).
        seq_starts: each sequence's start position as host ints (``None``: all 0).
        plan: the launch choices; ``None``: :func:`.plan.plan_for` of the shapes and device.

    Returns ``(o, ht, final_positions, residuals)``: ``o [B, T, HV, V]`` in ``v.dtype``, the final
    slots ``ht [N, HV, L, K, V]`` (fp32), ``final_positions [N]`` and the tuple of tensors (some
    ``None``) that :func:`chunk_log_linear_gated_delta_rule_bwd` takes.
    """
    B, T, HV, V = v.shape
    L = level_scales.shape[-1]
    layout = make_layout(B, T, seq_offsets, seq_starts, q.device)
    plan = plan_for_call(q, v, layout.pos_start.numel() * HV, plan)
    outs, local = local_part_fwd(q, k, v, g, beta, level_scales, scale, layout, plan.local == "triton")
    qe, w, kd, u, gam, om, o_intra = (x.contiguous() for x in (*outs[1:7], outs[0]))
    meta = (layout.chunk_offsets, layout.pos_start, layout.pos_end, layout.pos_start.numel(), L)
    o, ht, chunk_meta = chunk_inter_fwd(qe, w, kd, u, gam, om, h0, meta, o_intra, v.dtype, plan)
    o = from_tokens(o, layout, B, T)
    if outs[7] is not None:
        ht = ht + outs[7]
    return o, ht, layout.pos_end.clone(), (*local, qe, w, kd, u, gam, om, h0, *chunk_meta)


def saved_like(q, k, v, level_scales, plan: GDNLaunchPlan) -> list[torch.Tensor]:
    """Empty tensors of the shapes, dtypes and (contiguous) layout of ``residuals[6:]`` of
    :func:`chunk_log_linear_gated_delta_rule_fwd` for ``B`` sequences of ``T`` tokens from position 0
    without ``h0``, an absent one as a 0-element tensor: what the compiled training op's fake returns
    (:mod:`fla_loglinear.ops.library`; a test holds it to the real residuals).  The first six residuals,
    :func:`local_inputs` of the inputs, are not among them: they can be rebuilt from the inputs."""
    B, T, HV, K = q.shape
    V, L, C = v.shape[-1], level_scales.shape[-1], CHUNK_SIZE
    NC = B * triton.cdiv(T, C)
    f32 = dict(dtype=torch.float32)
    if plan.local == "triton":
        mm = k.dtype
        wy = [q.new_empty(NC * C, HV, **f32), k.new_empty(NC * C, HV, C), q.new_empty(NC, dtype=torch.int32)]
    else:
        mm = _mm_dtype(v.dtype)
        wy = [q.new_empty(0) for _ in range(3)]
    qe = q.new_empty(NC, HV, C, K, dtype=mm)
    return [*wy, qe, torch.empty_like(qe), torch.empty_like(qe), q.new_empty(NC, HV, C, V, dtype=mm),
            q.new_empty(NC, HV, **f32), q.new_empty(NC, HV, C, L, **f32), q.new_empty(0),
            q.new_empty(NC, dtype=torch.int64), q.new_empty(NC, dtype=torch.int32), q.new_empty(NC, dtype=torch.int8)]


def chunk_log_linear_gated_delta_rule_bwd(do: torch.Tensor | None, dht: torch.Tensor | None, residuals,
                                          scale: float, seq_offsets: list[int] | None,
                                          seq_starts: list[int] | None, B: int, T: int,
                                          plan: GDNLaunchPlan | None = None):
    """Gradients of :func:`chunk_log_linear_gated_delta_rule_fwd` from those of ``o`` and ``ht`` (either
    ``None``: no gradient) and the forward's ``residuals``, with the forward's other arguments.

    Returns ``(dq, dk, dv, dg, dbeta, dlevel_scales, dh0)`` in the inputs' dtypes (``dh0`` ``None``
    without ``h0``).
    """
    local, (qe, w, kd, u, gam, om, h0, *chunk_meta) = residuals[:9], residuals[9:]
    NC, HV, C, K = qe.shape
    V, L = u.shape[-1], om.shape[-1]
    layout = make_layout(B, T, seq_offsets, seq_starts, qe.device)
    meta = (layout.chunk_offsets, layout.pos_start, layout.pos_end, layout.pos_start.numel(), L)
    plan = plan_for_call(local[1], local[2], meta[3] * HV, plan)
    if do is None:  # only the final state was used
        do = torch.zeros(NC * C, HV, V, dtype=u.dtype, device=u.device)
    else:
        do = pad_tokens(do, layout)
    dqe, dw, dkd, du, dgam, dom, dh0 = chunk_inter_bwd(qe, w, kd, u, gam, om, h0, do, dht, meta, chunk_meta, plan)
    # o = o_intra + the slots' part, ht = the sweep's slots + end_keys
    grads = local_part_bwd(local, (do, dqe, dw, dkd, du, dgam, dom, dht), scale, layout, plan.local == "triton", B, T)
    return (*grads, dh0 if h0 is not None else None)


class ChunkLogLinearGatedDeltaRuleFunction(torch.autograd.Function):
    """The whole Triton path (chunk-local part and the sweeps over the slots) as one autograd node."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, level_scales, h0, scale, seq_offsets, seq_starts, plan):
        # an unused final state gets no gradient rather than a zero-filled one
        ctx.set_materialize_grads(False)
        o, ht, positions, residuals = chunk_log_linear_gated_delta_rule_fwd(
            q, k, v, g, beta, level_scales, scale, h0, seq_offsets, seq_starts, plan)
        ctx.save_for_backward(*residuals)
        ctx.mark_non_differentiable(positions)
        ctx.args = (scale, seq_offsets, seq_starts, q.shape[0], q.shape[1], plan)
        return o, ht, positions

    @staticmethod
    def backward(ctx, do, dht, _):
        grads = chunk_log_linear_gated_delta_rule_bwd(do, dht, ctx.saved_tensors, *ctx.args)
        return (*grads, None, None, None, None)


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
    with a hand-written backward (:mod:`.chunk_local_fused`), or in batched PyTorch for head dims below
    32 (:mod:`.chunk_local`); the sequential sweep over the Fenwick slots is Triton (:mod:`.chunk_inter_fwd`, :mod:`.chunk_inter_bwd`);
    the option preprocessing is PyTorch.  One autograd node covers the kernels
    (:class:`ChunkLogLinearGatedDeltaRuleFunction`).

    CUDA streams: where the sweeps have few programs (long sequences, few heads), the op overlaps
    independent kernels on a side stream and runs its sequential chain on a high-priority stream,
    both created once per device and joined back to the caller's stream before it returns.  To keep
    everything on the caller's stream pass
    ``_plan=plan_for(K, V, N * HV, v.dtype, v.device, streams=False)`` (:mod:`.plan`).

    ``_plan`` (private, for sweeps and tests): a :class:`.plan.GDNLaunchPlan` of every launch choice
    (block widths, prefetching, segmented forward, streams, fused or PyTorch local part); ``None``
    picks :func:`.plan.plan_for` of the call's shapes and device.
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
    plan = plan_for_call(q, v, N * HV, opts.plan) if triton_path else None
    state = settle_pending(state)
    q, k, g, beta = preprocess_inputs(q, k, g, beta, opts)
    if triton_path:
        q, k = on_value_heads(q, k, HV)
        # read on the host once, like fla's varlen chunk indices
        seq_offsets = None if cu_seqlens is None else cu_seqlens.tolist()
        seq_starts = None if state is None else state.positions.tolist()
        h0 = None if state is None else state.without_empty_slots().states
        o, ht, positions = ChunkLogLinearGatedDeltaRuleFunction.apply(
            q, k, v, g, beta, level_scales, h0, scale, seq_offsets, seq_starts, plan)
        final = FenwickState(ht, positions) if output_final_state else None
    else:
        o, final = naive_chunk_log_linear_gated_delta_rule(
            q, k, v, g, beta, level_scales, scale=scale, initial_state=state,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
        )
    return o, state_out(final, opts.state_v_first)
