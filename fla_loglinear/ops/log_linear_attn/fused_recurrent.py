"""Token-by-token scalar-gated log-linear attention for decoding (forward only).

Each program owns one (sequence, head, V block) and walks its tokens; the ``L`` slots of the
FenwickState are streamed through registers one at a time, so the state size is not bounded by
registers.  Positions stay on the device: every sequence merges by its own position.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla.ops.utils.op import exp

from fla_loglinear.ops.checks import finish_inplace
from fla_loglinear.ops.log_linear_attn.args import check_log_linear_attn_decode_args
from fla_loglinear.ops.log_linear_attn.naive import naive_recurrent_log_linear_attn
from fla_loglinear.ops.triton_levels import bit_length, slot_occupied
from fla_loglinear.ops.triton_env import use_triton
from fla_loglinear.state import FenwickState

__all__ = ["fused_recurrent_log_linear_attn"]

POS_BITS = 48


@triton.jit
def fused_recurrent_log_linear_attn_step(
    q, k, v, g, lam, src, dst, o, row, p, i_n, i_h, i_g, o_k, o_v, m_k, m_v, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_SRC: tl.constexpr, WRITE_ALL: tl.constexpr, POS_BITS: tl.constexpr,
):
    # Token p: decay every slot, write k v^T into slot 0, read all slots, then move to p + 1:
    # slots <= m = levels.advance_level(p, p + 1) merge into slot min(m, L - 1).  Slots empty at
    # p are neither read (whatever they hold is ignored) nor, unless WRITE_ALL, written: only the
    # occupied ones and the merge target can hold keys at p + 1, which is what bounds the bytes a
    # step moves by the popcount of p instead of L.
    m_kv = m_k[:, None] & m_v[None, :]
    b_q = tl.load(q + (row * G + i_g) * K + o_k, mask=m_k, other=0).to(tl.float32)
    b_k = tl.load(k + (row * G + i_g) * K + o_k, mask=m_k, other=0).to(tl.float32)
    b_v = tl.load(v + (row * H + i_h) * V + o_v, mask=m_v, other=0).to(tl.float32)
    b_decay = exp(tl.load(g + row * H + i_h).to(tl.float32))
    m = bit_length(p ^ (p + 1), POS_BITS)
    tgt = tl.minimum(m, L - 1)
    b_o = tl.zeros([BV], dtype=tl.float32)
    b_M = tl.zeros([BK, BV], dtype=tl.float32)
    for l in range(L):
        occ = slot_occupied(p, l, L)
        p_s = ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :]
        if HAS_SRC:
            # .cg: the previous step's stores (after a barrier) are in L2
            b_S = tl.load(src + p_s, mask=m_kv & occ, other=0, cache_modifier=".cg").to(tl.float32) * b_decay
        else:
            b_S = tl.zeros([BK, BV], dtype=tl.float32)
        if l == 0:
            b_S += b_k[:, None] * b_v[None, :]
        b_o += tl.load(lam + (row * H + i_h) * L + l).to(tl.float32) * tl.sum(b_S * b_q[:, None], axis=0)
        m_w = m_kv & (WRITE_ALL | occ | (l == tgt))
        if l <= m:
            b_M += b_S
            if l == tgt:
                tl.store(dst + p_s, b_M, mask=m_w)
            else:
                tl.store(dst + p_s, tl.zeros([BK, BV], dtype=tl.float32), mask=m_w)
        else:
            tl.store(dst + p_s, b_S, mask=m_w)
    tl.store(o + (row * H + i_h) * V + o_v, (b_o * scale).to(o.dtype.element_ty), mask=m_v)


@triton.jit(do_not_specialize=["scale", "T"])
def fused_recurrent_log_linear_attn_fwd_kernel(
    q, k, v, g, lam, h0, ht, o, cu_seqlens, pos0, scale, T,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, INPLACE: tl.constexpr,
    IS_VARLEN: tl.constexpr, POS_BITS: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T_n = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    else:
        bos = i_n * T
        T_n = i_n * 0 + T
    p0 = tl.load(pos0 + i_n).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    # The first token reads the caller's state, the later ones the state this program wrote.  A
    # new ht gets every slot from the first step (zeros in the empty ones); in place, h0 is ht.
    fused_recurrent_log_linear_attn_step(
        q, k, v, g, lam, h0, ht, o, bos, p0, i_n, i_h, i_g, o_k, o_v, m_k, m_v, scale,
        H, G, K, V, L, BK, BV, USE_INITIAL_STATE, not INPLACE, POS_BITS,
    )
    for t in range(1, T_n):
        tl.debug_barrier()
        fused_recurrent_log_linear_attn_step(
            q, k, v, g, lam, ht, ht, o, bos + t, p0 + t, i_n, i_h, i_g, o_k, o_v, m_k, m_v, scale,
            H, G, K, V, L, BK, BV, True, False, POS_BITS,
        )


def fused_recurrent_log_linear_attn_fwd(q, k, v, g, level_scales, h0, pos0, cu_seqlens, scale, inplace=False):
    B, T, G, K = q.shape
    H, V = v.shape[-2:]
    L = level_scales.shape[-1]
    N = pos0.shape[0]
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), max(16, 4096 // BK))
    o = torch.empty_like(v)
    ht = h0 if inplace else torch.empty(N, H, L, K, V, dtype=torch.float32, device=q.device)
    # without a state the first step never reads its source; ht only stands in for the pointer
    fused_recurrent_log_linear_attn_fwd_kernel[(N * H, triton.cdiv(V, BV))](
        q, k, v, g, level_scales, ht if h0 is None else h0, ht, o, cu_seqlens, pos0, scale, T,
        H=H, G=G, K=K, V=V, L=L, BK=BK, BV=BV, USE_INITIAL_STATE=h0 is not None, INPLACE=inplace,
        IS_VARLEN=cu_seqlens is not None, POS_BITS=POS_BITS,
    )
    return o, ht


def fused_recurrent_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
    inplace_final_state: bool = False,
    *,
    _use_triton: bool = False,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Scalar-gated log-linear attention, one token at a time, continuing from a FenwickState.

    For decoding: a few new tokens per sequence, no recomputation of earlier tokens and no host
    synchronisation (each sequence's position is read on the device and merges by its own
    position).  **Forward only**: it raises if gradients are required; train with
    ``chunk_log_linear_attn``, which computes the same outputs and states.

    Per token ``p``: every slot decays by ``exp(g_p)``, ``k_p v_p^T`` enters slot 0,
    ``o_p = scale * sum_l lambda_p[l] q_p^T S_l``, then slots ``<= levels.advance_level(p, p + 1)``
    merge into slot ``min(m, L - 1)``.

    Args:
        q: ``[B, T, G, K]`` queries; value head ``h`` uses head ``h // (H // G)``.
        k: ``[B, T, G, K]`` keys.
        v: ``[B, T, H, V]`` values, ``H % G == 0``.
        g: ``[B, T, H]`` per-token log gates.
        level_scales: ``[B, T, H, L]`` lambdas of the new tokens.
        initial_state: :class:`FenwickState` ``states [N, H, L, K, V]``, ``positions [N]``;
            ``None`` starts empty at position 0.
        output_final_state: also return the state after the new tokens.
        cu_seqlens: ``[N + 1]`` packed offsets of the new tokens (``B == 1``).
        scale: score scale; ``None`` means ``K ** -0.5``.
        inplace_final_state: write the final state into ``initial_state`` itself (its float32
            ``states`` and int64 ``positions`` tensors; ``output_final_state`` then returns that
            same object).  The layers decode this way: a step then touches only the slots that
            are occupied at the position (``levels.occupied_slots``) and the one it merges
            into, about ``popcount(p) + 1`` of the ``L``, instead of rewriting all of them.

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in ``v.dtype``; ``final_state`` a float32
        :class:`FenwickState` with ``positions + T_n``, or ``None``.

    CPU tensors run ``naive_recurrent_log_linear_attn`` unless the Triton interpreter is on and the
    private ``_use_triton=True`` asks for the kernel.
    """
    if torch.compiler.is_compiling():  # one custom op in the graph (ops/library.py)
        from fla_loglinear.ops.library import compiled_fused_recurrent_log_linear_attn
        return compiled_fused_recurrent_log_linear_attn(q, k, v, g, level_scales, initial_state, output_final_state,
                                                        cu_seqlens, scale, inplace_final_state, _use_triton)
    _, T, _, _, K, _, _, N = check_log_linear_attn_decode_args(
        q, k, v, g, level_scales, initial_state, cu_seqlens, inplace_final_state)
    scale = K ** -0.5 if scale is None else float(scale)
    # a decoding step is mostly launch overhead: equal lengths need no length tensors
    lengths = T if cu_seqlens is None else cu_seqlens.diff().to(torch.int64)
    if not use_triton(q, _use_triton):
        o, final = naive_recurrent_log_linear_attn(
            q, k, v, g, level_scales, initial_state, output_final_state or inplace_final_state, cu_seqlens, scale
        )
        if inplace_final_state:
            final = finish_inplace(initial_state, final, lengths)
        return o, (final if output_final_state else None)
    device = q.device
    if initial_state is None:
        h0, pos0 = None, torch.zeros(N, dtype=torch.int64, device=device)
    else:
        h0, pos0 = initial_state.states.float().contiguous(), initial_state.positions.to(torch.int64).contiguous()
    q, k, v, g, level_scales = (x.contiguous() for x in (q, k, v, g, level_scales))
    o, ht = fused_recurrent_log_linear_attn_fwd(
        q, k, v, g, level_scales, h0, pos0, cu_seqlens, scale, inplace_final_state
    )
    if inplace_final_state:
        final = finish_inplace(initial_state, None, lengths)
    else:
        final = FenwickState(ht, pos0 + lengths)
    return o, (final if output_final_state else None)
