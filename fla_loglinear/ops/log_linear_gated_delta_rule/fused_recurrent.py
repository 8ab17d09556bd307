"""Token-recurrent log-linear gated delta rule: decoding from a FenwickState."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.checks import check_inplace_state, finish_inplace
from fla_loglinear.ops.triton_levels import merge_slot, slot_occupied, slot_written_at
from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk import state_in, state_out, use_kernels
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_fwd import _store_merged
from fla_loglinear.ops.log_linear_gated_delta_rule.gate import parse_options, preprocess_inputs
from fla_loglinear.ops.log_linear_gated_delta_rule.naive import naive_recurrent_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.pending import attach_pending, settle_pending
from fla_loglinear.state import FenwickState

__all__ = ["fused_recurrent_log_linear_gated_delta_rule"]


@triton.jit
def _transition(s, k, eg, beta):
    # A S = e^g (S - beta k (k^T S)) for a [K, BV] slot
    return eg * (s - beta * k[:, None] * tl.sum(k[:, None] * s, 0)[None, :])


@triton.jit
def _transition_vector(x, k, eg, beta):
    # A x for a [K] vector
    return eg * (x - beta * tl.sum(k * x, 0) * k)


@triton.jit
def _log_entry(p_lk, p_lg, e, ok, m_k, K: tl.constexpr):
    # (k, e^g, beta) of entry e of a log of pending transitions (zeros unless ok)
    b_k = tl.load(p_lk + e * K, mask=tl.where(ok, m_k, False), other=0.)
    b_g = tl.load(p_lg + e * 2, mask=ok, other=0.)
    b_beta = tl.load(p_lg + e * 2 + 1, mask=ok, other=0.)
    return b_k, tl.exp(b_g), b_beta


@triton.jit(do_not_specialize=["T"])
def fused_recurrent_fwd_kernel(
    q, k, v, g, beta, lam, o, h0, h, pos, cu_seqlens, scale, T, S_K, S_V,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_H0: tl.constexpr, INPLACE: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        eos = bos + T
    p = tl.load(pos + i_n).to(tl.int64)

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    # state_v_first only changes the strides of the [K, V] slot
    o_h = i_nh.to(tl.int64) * L * K * V + o_k[:, None] * S_K + o_v[None, :] * S_V
    p_h = h + o_h

    for t in range(0, eos - bos):
        i_t = bos + t
        b_q = tl.load(q + (i_t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(k + (i_t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + (i_t * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_eg = tl.exp(tl.load(g + i_t * HV + i_hv).to(tl.float32))
        b_beta = tl.load(beta + i_t * HV + i_hv).to(tl.float32)
        mm = merge_slot(p, p + 1, L)

        # the token's own write beta k v^T enters slot 0; what q reads of it is a [BV] vector
        b_o = tl.load(lam + (i_t * HV + i_hv) * L).to(tl.float32) * b_beta * tl.sum(b_q * b_k, 0) * b_v
        b_acc = tl.zeros([BK, BV], dtype=tl.float32)
        for l in range(L):
            # Slots empty at p are skipped whole (no load, no K-axis reductions) and, except for
            # the first token's writes into a new h, not written: only the occupied ones and the
            # merge target hold keys at p + 1, so a step works on about popcount(p) + 1 slots, not L.
            occ = slot_occupied(p, l, L)
            m_w = m_kv & (occ | (l == mm) | ((t == 0) & (not INPLACE)))
            b_s = tl.zeros([BK, BV], dtype=tl.float32)
            if occ:
                # the first token reads the caller's state, so it is never copied
                if t == 0:
                    if HAS_H0:
                        b_s = tl.load(h0 + o_h + l * K * V, mask=m_kv, other=0.).to(tl.float32)
                else:
                    b_s = tl.load(p_h + l * K * V, mask=m_kv, other=0.)
                # A_p S = e^g (S - beta k (k^T S))
                b_s = _transition(b_s, b_k, b_eg, b_beta)
                b_lam = tl.load(lam + (i_t * HV + i_hv) * L + l).to(tl.float32)
                b_o += b_lam * tl.sum(b_q[:, None] * b_s, 0)
            if l == 0:
                b_s += b_beta * b_k[:, None] * b_v[None, :]
            # advance to p + 1: slots <= mm merge into slot mm
            if l < mm:
                b_acc += b_s
                tl.store(p_h + l * K * V, tl.zeros([BK, BV], dtype=tl.float32), mask=m_w)
            elif l == mm:
                tl.store(p_h + l * K * V, b_acc + b_s, mask=m_w)
            else:
                tl.store(p_h + l * K * V, b_s, mask=m_w)
        tl.store(o + (i_t * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        p += 1
        # the next token reads slots other threads just wrote
        tl.debug_barrier()


@triton.jit
def fused_recurrent_pending_kernel(
    q, k, v, g, beta, lam, o, h, pos, lk, lg, lfrom, scale, S_K, S_V,
    H: tl.constexpr, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, F: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr,
):
    # One token per sequence (token row i_n, with or without cu_seqlens), in place, with the log of
    # pending transitions of .pending: slots are read for the output through A^T q and written only
    # when merged into, or when the log is full.
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_hv = i_nh // HV, i_nh % HV
    i_h = i_hv // (HV // H)
    i_t = i_n.to(tl.int64)
    p = tl.load(pos + i_n).to(tl.int64)
    r = (p - tl.load(lfrom + i_n)) % F
    full = r == F - 1

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_h = h + i_nh.to(tl.int64) * L * K * V + o_k[:, None] * S_K + o_v[None, :] * S_V
    p_lk = lk + i_nh.to(tl.int64) * F * K + o_k
    p_lg = lg + i_nh.to(tl.int64) * F * 2

    b_q = tl.load(q + (i_t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
    b_k = tl.load(k + (i_t * H + i_h) * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_v = tl.load(v + (i_t * HV + i_hv) * V + o_v, mask=m_v, other=0.).to(tl.float32)
    b_g = tl.load(g + i_t * HV + i_hv).to(tl.float32)
    b_eg = tl.exp(b_g)
    b_beta = tl.load(beta + i_t * HV + i_hv).to(tl.float32)
    mm = merge_slot(p, p + 1, L)

    b_o = tl.load(lam + i_t * HV * L + i_hv * L).to(tl.float32) * b_beta * tl.sum(b_q * b_k, 0) * b_v
    # x = A_a^T ... A_p^T q with a the oldest transition the next slot has not seen (A is symmetric);
    # the slots' pending transitions only grow with l (levels.slot_written_at falls), so x only moves on
    b_x = _transition_vector(b_q, b_k, b_eg, b_beta)
    j = r
    b_acc = tl.zeros([BK, BV], dtype=tl.float32)
    for l in range(L):
        occ = slot_occupied(p, l, L)
        b_s = tl.zeros([BK, BV], dtype=tl.float32)
        j0 = r
        if occ:
            # the slot's read is issued first: it does not wait for x
            b_s = tl.load(p_h + l * K * V, mask=m_kv, other=0.)
            j0 = r - tl.minimum(p - slot_written_at(p, l), r)
            # entries j - 1 down to j0, each loaded one entry ahead of its use (x is a chain of reductions)
            b_kn, b_egn, b_bn = _log_entry(p_lk, p_lg, j - 1, j > j0, m_k, K)
            for i in range(0, j - j0):
                b_ki, b_egi, b_bi = b_kn, b_egn, b_bn
                b_kn, b_egn, b_bn = _log_entry(p_lk, p_lg, j - 2 - i, j - 2 - i >= j0, m_k, K)
                b_x = _transition_vector(b_x, b_ki, b_egi, b_bi)
            j = j0
            b_o += tl.load(lam + i_t * HV * L + i_hv * L + l).to(tl.float32) * tl.sum(b_x[:, None] * b_s, 0)
        if (l <= mm) | (occ & full):
            if occ:
                # bring the slot up to date: its pending transitions, oldest first, then this token's
                b_kn, b_egn, b_bn = _log_entry(p_lk, p_lg, j0, j0 < r, m_k, K)
                for i in range(j0, r):
                    b_ki, b_egi, b_bi = b_kn, b_egn, b_bn
                    b_kn, b_egn, b_bn = _log_entry(p_lk, p_lg, i + 1, i + 1 < r, m_k, K)
                    b_s = _transition(b_s, b_ki, b_egi, b_bi)
                b_s = _transition(b_s, b_k, b_eg, b_beta)
            if l == 0:
                b_s += b_beta * b_k[:, None] * b_v[None, :]
            b_acc = _store_merged(p_h, b_acc, b_s, l, mm, m_kv, K, V)
    tl.store(o + (i_t * HV + i_hv) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if not full:
        # every V block stores the same entry; none reads entry r in this launch
        tl.store(p_lk + r * K, b_k, mask=m_k)
        tl.store(p_lg + r * 2, b_g)
        tl.store(p_lg + r * 2 + 1, b_beta)


@functools.lru_cache(maxsize=None)
def _decode_blocks(K: int, V: int, pending: bool = False) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)`` of the decode kernels: one program per (sequence, value head, V block)
    holds whole ``[K, BV]`` slots.  Writing every slot, a step is bound by the slots' bytes, which 4
    warps stream fastest.  With pending transitions (``pending``) a step is mostly chains of ``[K]``
    reductions, which 2 warps run faster up to K = 128.  Cached: ``triton.next_power_of_2`` costs
    microseconds of host time, and every decode step pays its host time in full."""
    BK = max(16, triton.next_power_of_2(K))
    BV = max(16, min(triton.next_power_of_2(V), 32 if K >= 128 else 64))
    return BK, BV, 2 if pending and BK <= 128 else 4


def fused_recurrent_log_linear_gated_delta_rule_fwd(q, k, v, g, beta, level_scales, scale, initial_state,
                                                    state_v_first, cu_seqlens, N, lengths, inplace=False):
    """``lengths``: the new tokens per sequence (``T``, or ``[N]`` with ``cu_seqlens``).  An
    ``initial_state`` with pending transitions is decoded in place with them (one token per sequence)."""
    B, T, H, K = q.shape
    HV, V, L = v.shape[2], v.shape[3], level_scales.shape[-1]
    if initial_state is None:
        states, positions = None, torch.zeros(N, dtype=torch.int64, device=q.device)
    else:
        states, positions = initial_state.states, initial_state.positions.to(torch.int64)
    # work in the caller's layout: [N, HV, L, K, V] or, with state_v_first, [N, HV, L, V, K]
    h0 = None if initial_state is None else (states.transpose(-1, -2) if state_v_first else states).contiguous()
    if inplace:  # the caller's contiguous float32 tensor (check_inplace_state), so h0 is it
        buf = h0
    elif state_v_first:
        buf = torch.empty(N, HV, L, V, K, dtype=torch.float32, device=q.device)
    else:
        buf = torch.empty(N, HV, L, K, V, dtype=torch.float32, device=q.device)
    s_k, s_v = (1, K) if state_v_first else (V, 1)
    o = torch.empty(B, T, HV, V, dtype=v.dtype, device=q.device)
    pending = initial_state is not None and initial_state.has_pending
    BK, BV, num_warps = _decode_blocks(K, V, pending)
    q, k, v, g, beta, level_scales = (x.contiguous() for x in (q, k, v, g, beta, level_scales))
    # plain integers: triton.cdiv is a constexpr function, slow to call from Python
    grid = ((V + BV - 1) // BV, N * HV)
    if pending:
        st = initial_state
        fused_recurrent_pending_kernel[grid](
            q, k, v, g, beta, level_scales, o, buf, positions, st.pending_keys, st.pending_gates, st.pending_from,
            scale, s_k, s_v,
            H=H, HV=HV, K=K, V=V, L=L, F=st.pending_keys.shape[2], BK=BK, BV=BV, num_warps=num_warps,
        )
        return o, None
    fused_recurrent_fwd_kernel[grid](
        q, k, v, g, beta, level_scales, o, h0, buf, positions, cu_seqlens, scale, T, s_k, s_v,
        H=H, HV=HV, K=K, V=V, L=L, BK=BK, BV=BV, IS_VARLEN=cu_seqlens is not None, HAS_H0=h0 is not None,
        INPLACE=inplace,
        num_warps=num_warps,
    )
    if inplace:  # the caller advances the positions (finish_inplace)
        return o, None
    # buf is in the caller's layout; return it as [N, HV, L, K, V] so state_out can transpose back
    kv = buf.transpose(-1, -2) if state_v_first else buf
    return o, FenwickState(kv, positions + lengths)


def check_decode_args(q, k, v, g, beta, level_scales, initial_state, use_qk_l2norm_in_kernel, cu_seqlens,
                      inplace_final_state, kwargs):
    """The checks of a decoding call, eager or as ``torch.compile`` traces it, before any work.

    Returns ``(opts, state, (B, T, H, HV, K, V, L, N))`` with ``state`` the initial state in the
    kernels' ``[K, V]`` slot layout (see ``state_in``).
    """
    op = "fused_recurrent_log_linear_gated_delta_rule"
    opts = parse_options(op, use_qk_l2norm_in_kernel, kwargs)
    # same rule on every device: no path of this op has a backward
    tensors = [q, k, v, g, beta, level_scales, opts.A_log, opts.dt_bias]
    if isinstance(initial_state, FenwickState):
        tensors.append(initial_state.states)
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors):
        raise RuntimeError(f"{op} is forward-only (decoding); use chunk_log_linear_gated_delta_rule for training")
    state = state_in(initial_state, opts.state_v_first)
    dims = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, initial_state=state, cu_seqlens=cu_seqlens, pending=True
    )
    if inplace_final_state:
        check_inplace_state(initial_state)
    return opts, state, dims


def fused_recurrent_log_linear_gated_delta_rule(
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
    inplace_final_state: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, FenwickState | None]:
    r"""Log-linear Gated DeltaNet, token by token: decoding from a :class:`FenwickState`.

    Same arguments and options as :func:`chunk_log_linear_gated_delta_rule` (shapes: q, k
    ``[B, T, H, K]``, v ``[B, T, HV, V]``, g, beta ``[B, T, HV]``, level_scales ``[B, T, HV, L]``,
    states ``[N, HV, L, K, V]`` or ``[N, HV, L, V, K]`` with ``state_v_first``).  Each sequence
    continues from its own ``initial_state.positions[n]`` (read on the device: no host sync, no
    recomputation of earlier tokens).  Per token: every slot goes through
    ``A_p = e^{g_p} (I - beta_p k_p k_p^T)``, ``beta_p k_p v_p^T`` enters slot 0,
    ``o_p = scale * sum_l lambda_p[l] q_p^T S_l``, then slots ``<= advance_level(p, p + 1)`` merge.

    ``inplace_final_state=True`` writes the final state into ``initial_state``'s own float32
    ``states`` and int64 ``positions`` (``output_final_state`` then returns that object): the
    layer decodes this way.  On the Triton path a call of one token per sequence then leaves the
    token's transition pending in a log on the state (:mod:`.pending`): it reads the occupied slots
    (``levels.occupied_slots``) and writes only the one it merges into, and all of them once every
    ``PENDING_CAPACITY`` tokens.  Every other use of such a state applies the log first.

    Forward only (decoding): raises on every device if a gradient is required; train with the chunked op.
    CUDA runs the Triton kernel; CPU runs ``naive_recurrent_log_linear_gated_delta_rule``.
    """
    if torch.compiler.is_compiling():  # one custom op in the graph (ops/library.py)
        from fla_loglinear.ops.library import compiled_fused_recurrent_log_linear_gated_delta_rule
        return compiled_fused_recurrent_log_linear_gated_delta_rule(
            q, k, v, g, beta, level_scales, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
            cu_seqlens, inplace_final_state, kwargs)
    opts, state, (B, T, H, HV, K, V, L, N) = check_decode_args(
        q, k, v, g, beta, level_scales, initial_state, use_qk_l2norm_in_kernel, cu_seqlens, inplace_final_state, kwargs)
    if scale is None:
        scale = K ** -0.5
    triton_path = use_kernels(q, opts.force_triton, K, L)
    # in-place steps of one token per sequence (cu_seqlens offsets strictly increase) keep a log of
    # pending transitions (.pending); any other call applies it first
    keep_pending = inplace_final_state and triton_path and L > 1 and B * T == N
    if keep_pending:
        if not initial_state.has_pending:  # the first such step: state_in's view must carry the new log
            attach_pending(initial_state, K)
            state = state_in(initial_state, opts.state_v_first)
    elif state is not None and state.has_pending:
        settled = settle_pending(state)
        if inplace_final_state:  # into the caller's tensors; finish_inplace empties the log
            state.states.copy_(settled.states)
            settled = FenwickState(state.states, state.positions)
        state = settled
    q, k, g, beta = preprocess_inputs(q, k, g, beta, opts)
    # a decoding step is mostly launch overhead: equal lengths need no length tensor
    lengths = T if cu_seqlens is None else cu_seqlens.diff().long()
    if triton_path:
        o, final = fused_recurrent_log_linear_gated_delta_rule_fwd(
            q, k, v, g, beta, level_scales, scale, state, opts.state_v_first, cu_seqlens, N, lengths,
            inplace_final_state,
        )
    else:
        o, final = naive_recurrent_log_linear_gated_delta_rule(
            q, k, v, g, beta, level_scales, scale=scale, initial_state=state,
            output_final_state=output_final_state or inplace_final_state, cu_seqlens=cu_seqlens,
        )
    if inplace_final_state:
        # the kernel wrote the states already; the reference's new ones are copied in
        final = finish_inplace(initial_state, None if triton_path else state_out(final, opts.state_v_first), lengths,
                               kept_pending=keep_pending)
        return o, (final if output_final_state else None)
    return o, state_out(final if output_final_state else None, opts.state_v_first)
