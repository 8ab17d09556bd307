"""The chunk-local half of the chunked log-linear gated delta rule as fused Triton kernels.

Same quantities as :mod:`.chunk_local` (read its docstring for the math), computed per
(chunk, value head) by one program instead of many small batched PyTorch ops, with a
hand-written backward instead of autograd over dense ``[NC, HV, C, C]`` tensors:

* fla's kernels build the WY inverse ``T = (I + tril(beta_i k_i.k_j e^{G_i - G_j}, -1))^{-1}``
  (``chunk_local_cumsum`` with fla's base-2 gates, ``chunk_scaled_dot_kkt_fwd``,
  ``solve_tril``), exactly as fla's ``chunk_gated_delta_rule_fwd`` calls them, on the padded
  token layout ``[1, NC * C, HV, ...]`` whose chunks of 64 rows are our aligned chunks.
  Without CUDA (interpreter tests) the same two tensors come from :func:`wy_prep_torch`.
* :func:`chunk_local_fused_fwd_kernel` computes ``W, U, Qeff, Kd, gamma``, the per-slot query
  weights ``omega`` and the lambda-masked intra-chunk output, writing them in the
  ``[NC, HV, C, ...]`` layout the slot scan (:mod:`.chunk_inter_fwd`) reads.
* :func:`chunk_local_fused_bwd_kernel` takes the gradients of all of these and returns those
  of ``q, k, v, g, beta, level_scales`` (``g`` through the in-chunk cumulative sum).

Gates are base 2 inside the kernels (``G2 = G / ln 2``, ``exp2``), as in fla; every gradient
is taken with respect to the natural-log ``G``.  Matmul operands are in the input dtype
(bf16 at the benchmark shape) with fp32 accumulation; the gradients are accumulated in fp32.

The last chunk of a sequence that ends inside it holds keys for several slots of the final
state; those (at most N chunks) are redone in PyTorch by :func:`.chunk_local.end_chunk_keys`,
so that their gradients flow by autograd.

Blocks are at least 32 wide (:func:`_config`): 16-wide blocks under 8 warps lower to 8-column TF32
wgmma on sm_90, which can read shared memory past its operand (triton-lang/triton#10629); the tests
lower both kernels for sm_90 and check the MMA shapes.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local import unit_lower_inverse
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import PaddedChunkLayout
from fla_loglinear.ops.triton_env import dot_precision
from fla_loglinear.ops.triton_levels import bit_length

__all__ = ["chunk_local_fused_fwd", "chunk_local_fused_bwd", "wy_prep", "wy_prep_torch"]

# not fla.ops.utils.constant.RCP_LN2 (1.4426950216, rounded at the 9th digit): the exact value
RCP_LN2 = 1.0 / math.log(2.0)
# log2 of the chunk size: in-chunk levels are 0 .. LOG_C
LOG_C = 6
_LOG_C = tl.constexpr(LOG_C)
# the forward kernel; _config's minimum block width depends on it
NUM_WARPS = 8
# the backward: one warpgroup was faster than two at short and long sequences (bf16, K = V = 128);
# its products are then at least 32 columns wide (sm_90 lowering: no narrow TF32 wgmma, <= 128 KB shared)
BWD_NUM_WARPS = 4


@triton.jit
def _level_mask(lam_row_ptr, o_i, incl, L, NLI: tl.constexpr, C: tl.constexpr):
    # Lambda[i, j] = lam_i[min(level(i, j), L - 1)]; in an aligned chunk level(t, s) of
    # levels.py is bit_length(i ^ j) of the local indices
    lvl = tl.minimum(bit_length(o_i[:, None] ^ o_i[None, :], _LOG_C + 1), L - 1)
    b_lm = tl.zeros([C, C], dtype=tl.float32)
    for l in tl.static_range(NLI):
        b_l = tl.load(lam_row_ptr + l).to(tl.float32)
        b_lm += tl.where(lvl == l, b_l[:, None], 0.)
    return tl.where(incl, b_lm, 0.), lvl


@triton.jit
def _chunk_rows(HV: tl.constexpr, C: tl.constexpr):
    """The rows of program (chunk ``i_c``, value head ``i_h``): ``rh`` in the per-token ``[NC * C, HV]``
    inputs, ``orow`` in the ``[NC, HV, C, ...]`` outputs, and the tile bases ``tq`` (token rows,
    row stride ``r_t``) and ``to`` (outputs)."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_i = tl.arange(0, C)
    rh = (i_c * C + o_i) * HV + i_h
    orow = (i_c * HV + i_h) * C + o_i
    # tiles address as int64 scalar base + int32 offsets (keeps [C, B] pointer math in 32 bits)
    return i_c, i_h, o_i, rh, orow, i_c * C * HV + i_h, o_i * HV, (i_c * HV + i_h) * C


@triton.jit
def _chunk_qk(q, k, tq, r_t, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """``q k^T`` of the chunk's token rows, accumulated over blocks of K (no ``[C, K]`` tile is held)."""
    b_qk = tl.zeros([C, C], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_q = tl.load(q + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.)
        b_k = tl.load(k + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.)
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    return b_qk


# L is a runtime value: one compile serves every sequence length (num_levels(T) changes with T)
@triton.jit(do_not_specialize=["NC", "L"])
def chunk_local_fused_fwd_kernel(
    q, k, v, g2, beta, A, lam, a_off,
    o, qe, w, kd, u, gam, om,
    NC, scale,
    L, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, NLI: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_h, o_i, rh, orow, tq, r_t, to = _chunk_rows(HV, C)
    incl = o_i[:, None] >= o_i[None, :]

    b_g = tl.load(g2 + rh).to(tl.float32)
    b_b = tl.load(beta + rh).to(tl.float32)
    b_A = tl.load(A + tq * C + (r_t * C)[:, None] + o_i[None, :])
    g_last = tl.sum(tl.where(o_i == C - 1, b_g, 0.))
    b_eg = tl.exp2(b_g)
    # masked before exp2: above the diagonal G_i - G_j > 0 can overflow
    b_dec = tl.exp2(tl.where(incl, b_g[:, None] - b_g[None, :], float("-inf")))

    b_qk = _chunk_qk(q, k, tq, r_t, K, C, BK, PREC)
    b_md = (b_qk * b_dec).to(b_A.dtype)
    # intra-chunk output (Lambda * scale M T diag(beta)) V
    b_x = tl.dot(b_md, b_A, input_precision=PREC)
    b_lm, _ = _level_mask(lam + rh * L, o_i, incl, L, NLI, C)
    b_p = (b_lm * (scale * b_x * b_b[None, :])).to(b_A.dtype)

    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        b_v = tl.load(v + tq * V + (r_t * V)[:, None] + o_v[None, :], mask=m_v, other=0.)
        b_o = tl.dot(b_p, b_v.to(b_A.dtype), input_precision=PREC)
        # token rows like v: the slot scan adds its part and writes the op's output in place
        tl.store(o + tq * V + (r_t * V)[:, None] + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_v)
        b_vb = (b_v.to(tl.float32) * b_b[:, None]).to(b_A.dtype)
        b_u = tl.dot(b_A, b_vb, input_precision=PREC)
        tl.store(u + to * V + (o_i * V)[:, None] + o_v[None, :], b_u.to(u.dtype.element_ty), mask=m_v)

    b_kdec = tl.exp2(g_last - b_g)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_q = tl.load(q + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_kbg = (b_k * (b_b * b_eg)[:, None]).to(b_A.dtype)
        b_w = tl.dot(b_A, b_kbg, input_precision=PREC)
        b_wd = b_w.to(b_A.dtype)
        tl.store(w + to * K + (o_i * K)[:, None] + o_k[None, :], b_wd.to(w.dtype.element_ty), mask=m_k)
        b_qe = scale * (b_eg[:, None] * b_q - tl.dot(b_md, b_wd, input_precision=PREC))
        tl.store(qe + to * K + (o_i * K)[:, None] + o_k[None, :], b_qe.to(qe.dtype.element_ty), mask=m_k)
        tl.store(kd + to * K + (o_i * K)[:, None] + o_k[None, :], (b_kdec[:, None] * b_k).to(kd.dtype.element_ty),
                 mask=m_k)
    # the slot scan takes gamma in natural log (times ln 2)
    tl.store(gam + i_c * HV + i_h, g_last * 0.6931471805599453)

    # omega[t, l] = lam_t[min(max(l, bit_length(t ^ a)), L - 1)] (levels.state_slot_weights);
    # t and the chunk's start a share the chunk, so t ^ a is a local xor
    b_bl = bit_length(o_i ^ tl.load(a_off + i_c), _LOG_C + 1)
    for l in range(L):
        idx = tl.minimum(tl.maximum(b_bl, l), L - 1)
        tl.store(om + orow * L + l, tl.load(lam + rh * L + idx).to(tl.float32))


# L is a runtime value: one compile serves every sequence length (num_levels(T) changes with T)
@triton.jit(do_not_specialize=["NC", "L"])
def chunk_local_fused_bwd_kernel(
    q, k, v, g2, beta, A, lam, a_off,
    do, dqe, dw, dkd, du, dgam, dom,
    dq, dk, dv, dg, db, dlam,
    NC, scale,
    L, HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, NLI: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_h, o_i, rh, orow, tq, r_t, to = _chunk_rows(HV, C)
    incl = o_i[:, None] >= o_i[None, :]
    strict = o_i[:, None] > o_i[None, :]

    b_g = tl.load(g2 + rh).to(tl.float32)
    b_b = tl.load(beta + rh).to(tl.float32)
    b_A = tl.load(A + tq * C + (r_t * C)[:, None] + o_i[None, :])
    b_At = tl.load(A + tq * C + (r_t * C)[None, :] + o_i[:, None])
    g_last = tl.sum(tl.where(o_i == C - 1, b_g, 0.))
    b_eg = tl.exp2(b_g)

    # Register pressure decides the order: no [C, C] matrix is kept that can be recomputed
    # cheaply (decay, level mask) or folded into a K-blocked product (k k^T, q k^T).
    b_qk = _chunk_qk(q, k, tq, r_t, K, C, BK, PREC)
    b_md = (b_qk * tl.exp2(tl.where(incl, b_g[:, None] - b_g[None, :], float("-inf")))).to(b_A.dtype)
    b_lm, _ = _level_mask(lam + rh * L, o_i, incl, L, NLI, C)
    b_pd = (b_lm * (scale * tl.dot(b_md, b_A, input_precision=PREC) * b_b[None, :])).to(b_A.dtype)

    # o = P V with P = Lambda * Aeff, u = T (beta v)
    b_dp = tl.zeros([C, C], dtype=tl.float32)
    b_dA = tl.zeros([C, C], dtype=tl.float32)
    b_db = tl.zeros([C], dtype=tl.float32)
    b_dG = tl.zeros([C], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = (o_v < V)[None, :]
        b_v = tl.load(v + tq * V + (r_t * V)[:, None] + o_v[None, :], mask=m_v, other=0.).to(tl.float32)
        b_do = tl.load(do + tq * V + (r_t * V)[:, None] + o_v[None, :], mask=m_v, other=0.).to(b_A.dtype)
        b_du = tl.load(du + to * V + (o_i * V)[:, None] + o_v[None, :], mask=m_v, other=0.).to(b_A.dtype)
        b_dp += tl.dot(b_do, tl.trans(b_v.to(b_A.dtype)), input_precision=PREC)
        b_dvb = tl.dot(b_At, b_du, input_precision=PREC)
        b_dv = tl.dot(tl.trans(b_pd), b_do, input_precision=PREC) + b_dvb * b_b[:, None]
        tl.store(dv + tq * V + (r_t * V)[:, None] + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_v)
        b_vb = (b_v * b_b[:, None]).to(b_A.dtype)
        b_dA += tl.dot(b_du, tl.trans(b_vb), input_precision=PREC)
        b_db += tl.sum(b_dvb * b_v, 1)

    # recomputed rather than held through the V loop
    b_x = tl.dot(b_md, b_A, input_precision=PREC)
    b_lm, lvl = _level_mask(lam + rh * L, o_i, incl, L, NLI, C)
    b_ae = scale * b_x * b_b[None, :]
    # level mask entries; stored now so the mask dies before the K loops (omega's part added last)
    b_dlm = tl.where(incl, b_dp * b_ae, 0.)
    for l in range(L):
        b_dl = tl.zeros([C], dtype=tl.float32)
        if l < NLI:
            b_dl += tl.sum(tl.where(lvl == l, b_dlm, 0.), 1)
        tl.store(dlam + rh * L + l, b_dl)
    b_dae = b_dp * b_lm
    b_db += scale * tl.sum(b_dae * b_x, 0)
    b_dxd = (scale * b_dae * b_b[None, :]).to(b_A.dtype)
    # X = M T
    b_dm = tl.dot(b_dxd, b_At, input_precision=PREC)
    b_dA += tl.dot(tl.trans(b_md), b_dxd, input_precision=PREC)

    # Qeff = scale (e^G q - M W), W = T (beta e^G k), Kd = e^{gamma - G} k, gamma = G[-1]
    b_kdec = tl.exp2(g_last - b_g)
    b_dlast = tl.zeros([], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_q = tl.load(q + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_dqe = tl.load(dqe + to * K + (o_i * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_dw = tl.load(dw + to * K + (o_i * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_dkd = tl.load(dkd + to * K + (o_i * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
        b_kbg = b_k * (b_b * b_eg)[:, None]
        b_kbgd = b_kbg.to(b_A.dtype)
        b_wd = tl.dot(b_A, b_kbgd, input_precision=PREC).to(b_A.dtype)
        b_dqed = b_dqe.to(b_A.dtype)
        b_dm -= scale * tl.dot(b_dqed, tl.trans(b_wd), input_precision=PREC)
        b_dwt = b_dw - scale * tl.dot(tl.trans(b_md), b_dqed, input_precision=PREC)
        b_dG += scale * b_eg * tl.sum(b_dqe * b_q, 1)
        b_dwtd = b_dwt.to(b_A.dtype)
        b_dA += tl.dot(b_dwtd, tl.trans(b_kbgd), input_precision=PREC)
        b_dB1 = tl.dot(b_At, b_dwtd, input_precision=PREC)
        b_db += tl.sum(b_dB1 * b_k * b_eg[:, None], 1)
        b_dG += tl.sum(b_dB1 * b_kbg, 1)
        b_t = tl.sum(b_dkd * b_k, 1) * b_kdec
        b_dG -= b_t
        b_dlast += tl.sum(b_t)
        b_dq = scale * b_eg[:, None] * b_dqe
        tl.store(dq + tq * K + (r_t * K)[:, None] + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_k)
        b_dk = b_dB1 * (b_b * b_eg)[:, None] + b_kdec[:, None] * b_dkd
        tl.store(dk + tq * K + (r_t * K)[:, None] + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_k)
    b_dG += tl.where(o_i == C - 1, b_dlast + tl.load(dgam + i_c * HV + i_h).to(tl.float32), 0.)

    # T = (I + Ls)^{-1}: dLs = -T^T dT T^T on the strict lower triangle (T's other entries are constant)
    b_dA = tl.where(strict, b_dA, 0.).to(b_A.dtype)
    b_dls = tl.dot(b_At, tl.dot(b_dA, b_At, input_precision=PREC).to(b_A.dtype), input_precision=PREC)
    b_dec = tl.exp2(tl.where(incl, b_g[:, None] - b_g[None, :], float("-inf")))
    # Ls = beta_i (k_i . k_j) e^{G_i - G_j}: dLs' = dLs e^{G_i - G_j} serves k, beta and G alike
    b_dls = tl.where(strict, -b_dls * b_dec, 0.)
    b_dlsd = b_dls.to(b_A.dtype)
    b_ed = (b_dls * b_b[:, None]).to(b_A.dtype)
    # M = (q_i . k_j) e^{G_i - G_j} on and below the diagonal
    b_dmd = (b_dm * b_dec).to(b_A.dtype)
    tl.debug_barrier()
    # the G / beta terms sum_j X_ij (a_i . b_j) are row sums of a_i * (X b)_i, taken per K block
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = (o_k < K)[None, :]
        b_q = tl.load(q + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(b_A.dtype)
        b_k = tl.load(k + tq * K + (r_t * K)[:, None] + o_k[None, :], mask=m_k, other=0.).to(b_A.dtype)
        b_qf = b_q.to(tl.float32)
        b_kf = b_k.to(tl.float32)
        b_mk = tl.dot(b_dmd, b_k, input_precision=PREC)
        b_mq = tl.dot(tl.trans(b_dmd), b_q, input_precision=PREC)
        b_lk = tl.dot(b_dlsd, b_k, input_precision=PREC)
        b_lkt = tl.dot(tl.trans(b_ed), b_k, input_precision=PREC)
        b_dG += tl.sum(b_qf * b_mk, 1) - tl.sum(b_kf * b_mq, 1) + tl.sum(b_kf * (b_lk * b_b[:, None] - b_lkt), 1)
        b_db += tl.sum(b_kf * b_lk, 1)
        p_dq = dq + tq * K + (r_t * K)[:, None] + o_k[None, :]
        p_dk = dk + tq * K + (r_t * K)[:, None] + o_k[None, :]
        tl.store(p_dq, tl.load(p_dq, mask=m_k, other=0.) + b_mk, mask=m_k)
        tl.store(p_dk, tl.load(p_dk, mask=m_k, other=0.) + b_mq + b_lk * b_b[:, None] + b_lkt, mask=m_k)

    # g enters through its in-chunk cumulative sum G
    b_dg = tl.sum(tl.where(o_i[None, :] >= o_i[:, None], b_dG[None, :], 0.), 1)
    tl.store(dg + rh, b_dg)
    tl.store(db + rh, b_db)

    b_bl = bit_length(o_i ^ tl.load(a_off + i_c), _LOG_C + 1)
    tl.debug_barrier()
    for l in range(L):
        b_dl = tl.load(dlam + rh * L + l)
        for l2 in range(L):
            b_hit = tl.minimum(tl.maximum(b_bl, l2), L - 1) == l
            b_dl += tl.where(b_hit, tl.load(dom + orow * L + l2).to(tl.float32), 0.)
        tl.store(dlam + rh * L + l, b_dl)


def _config(K: int, V: int, dtype: torch.dtype, bwd: bool = False):
    # the backward holds five [C, BK] tiles per K step next to its [C, C] matrices
    cap = 32 if bwd else 64
    # at least 32: the kernels run 8 warps, which split a [C, B] product's columns over two
    # warpgroups, and B = 16 becomes 8-column TF32 wgmma (fp32 inputs), which can read shared
    # memory past its operand (triton-lang/triton#10629).
    # Blocks wider than K or V are masked.
    BK = max(32, min(cap, triton.next_power_of_2(K)))
    BV = max(32, min(cap, triton.next_power_of_2(V)))
    return BK, BV, dot_precision(dtype)


def wy_prep_torch(k, g, beta, C: int = 64):
    """PyTorch equivalent of the fla calls in :func:`wy_prep` (CPU / interpreter tests).

    Inputs ``[1, NC * C, HV, ...]``; returns the base-2 in-chunk cumulative gate ``G2`` (fp32)
    and the WY inverse ``T`` ``[1, NC * C, HV, C]`` (row ``i`` of chunk ``c`` holds ``T[i, :]``) in ``k.dtype``.
    """
    _, NT, HV, K = k.shape
    NC = NT // C
    G2 = (g.float().reshape(NC, C, HV).cumsum(1) * RCP_LN2)
    kc = k.float().reshape(NC, C, HV, K).transpose(1, 2)
    bc = beta.float().reshape(NC, C, HV).transpose(1, 2)
    Gc = G2.transpose(1, 2)
    idx = torch.arange(C, device=k.device)
    strict = idx[:, None] > idx[None, :]
    dec = torch.where(strict, Gc[..., :, None] - Gc[..., None, :], float("-inf")).exp2()
    ls = bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * dec
    tinv = unit_lower_inverse(ls)
    A = tinv.transpose(1, 2).reshape(1, NT, HV, C).to(k.dtype)
    return G2.reshape(1, NT, HV), A


def wy_prep(k, g, beta, C: int = 64):
    """``(G2, T)`` of :func:`wy_prep_torch` by fla's kernels, as ``chunk_gated_delta_rule_fwd`` calls them."""
    if not k.is_cuda:
        return wy_prep_torch(k, g, beta, C)
    from fla.ops.common.chunk_scaled_dot_kkt import chunk_scaled_dot_kkt_fwd
    from fla.ops.utils import chunk_local_cumsum, solve_tril

    G2 = chunk_local_cumsum(g, chunk_size=C, scale=RCP_LN2)
    A = chunk_scaled_dot_kkt_fwd(k=k, g=G2, beta=beta, chunk_size=C, output_dtype=torch.float32)
    A = solve_tril(A=A, output_dtype=k.dtype)
    return G2, A


def _launch_args(lam, layout):
    L = lam.shape[-1]
    a_off = (layout.chunk_start - layout.row_pos[:, 0]).to(torch.int32).contiguous()
    return L, min(L, LOG_C + 1), a_off


def chunk_local_fused_fwd(q, k, v, g, beta, lam, scale: float, layout: PaddedChunkLayout):
    """The fused forward on padded token rows ``[NC * C, HV, ...]`` (q, k, v in one dtype).

    Returns ``(o_intra, qe, w, kd, u, gamma, omega)`` (``o_intra`` in the token rows, the rest
    ``[NC, HV, C, ...]``) and what :func:`chunk_local_fused_bwd` needs besides the inputs:
    ``(G2, A, a_off)``.
    """
    NT, HV, K = k.shape
    V = v.shape[-1]
    C, NC = layout.C, layout.NC
    L, NLI, a_off = _launch_args(lam, layout)
    BK, BV, prec = _config(K, V, k.dtype)
    G2, A = wy_prep(k[None], g[None], beta[None], C)
    G2, A = G2[0], A[0]
    dev, mm = k.device, k.dtype
    # in the input dtype, like the op's output: the slot sweep adds its part in fp32, and the
    # output's gradient reaches the backward without a cast
    o = torch.empty(NT, HV, V, dtype=mm, device=dev)
    qe = torch.empty(NC, HV, C, K, dtype=mm, device=dev)
    w = torch.empty_like(qe)
    kd = torch.empty_like(qe)
    u = torch.empty(NC, HV, C, V, dtype=mm, device=dev)
    gam = torch.empty(NC, HV, dtype=torch.float32, device=dev)
    om = torch.empty(NC, HV, C, L, dtype=torch.float32, device=dev)
    chunk_local_fused_fwd_kernel[(NC, HV)](
        q, k, v, G2, beta, A, lam, a_off, o, qe, w, kd, u, gam, om, NC, scale,
        L, HV=HV, K=K, V=V, NLI=NLI, C=C, BK=BK, BV=BV, PREC=prec, num_warps=NUM_WARPS,
    )
    return (o, qe, w, kd, u, gam, om), (G2, A, a_off)


def chunk_local_fused_bwd(q, k, v, G2, beta, A, lam, a_off, do, dqe, dw, dkd, du, dgam, dom, scale: float,
                          layout: PaddedChunkLayout):
    """Gradients of :func:`chunk_local_fused_fwd`'s outputs -> ``(dq, dk, dv, dg, dbeta, dlam)``, the first
    three in the inputs' dtype, the last three fp32 (the caller casts them to its inputs' dtypes)."""
    NT, HV, K = k.shape
    V = v.shape[-1]
    C, NC = layout.C, layout.NC
    L = lam.shape[-1]
    BK, BV, prec = _config(K, V, k.dtype, bwd=True)
    do, dqe, dw, dkd, du, dgam, dom = (x.contiguous() for x in (do, dqe, dw, dkd, du, dgam, dom))
    f32 = dict(dtype=torch.float32, device=k.device)
    # written once each, so straight in the inputs' dtypes (no fp32 copies to cast)
    dq = torch.empty(NT, HV, K, dtype=q.dtype, device=k.device)
    dk = torch.empty(NT, HV, K, dtype=k.dtype, device=k.device)
    dv = torch.empty(NT, HV, V, dtype=v.dtype, device=k.device)
    dg = torch.empty(NT, HV, **f32)
    db = torch.empty(NT, HV, **f32)
    dlam = torch.empty(NT, HV, L, **f32)
    chunk_local_fused_bwd_kernel[(NC, HV)](
        q, k, v, G2, beta, A, lam, a_off,
        do, dqe, dw, dkd, du, dgam, dom,
        dq, dk, dv, dg, db, dlam, NC, scale,
        L, HV=HV, K=K, V=V, NLI=min(L, LOG_C + 1), C=C, BK=BK, BV=BV, PREC=prec, num_warps=BWD_NUM_WARPS,
    )
    return dq, dk, dv, dg, db, dlam
