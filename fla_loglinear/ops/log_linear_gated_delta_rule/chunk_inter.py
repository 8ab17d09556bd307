"""The sequential half of the chunked log-linear gated delta rule: every Fenwick slot across chunks.

One program owns one (sequence, value head, block of V columns) and walks its chunks in
order.  The slots ``[L, K, BV]`` live in the fp32 state buffer (too large for registers at
useful L); per chunk each *live* slot ``S`` is read once to add ``omega_l * (Qeff S)`` to the
output and is carried to the chunk end as ``e^gamma S - Kd^T (W S)`` (see
:mod:`.chunk_local`).  Slots ``<= m`` then merge into slot ``min(m, L - 1)`` together with the
chunk's keys ``Kd^T U`` (``m = advance_level(a, b)`` of levels.py).  A bit mask tracks which
slots can be non-zero, so the work per chunk is the number of live slots (about
``popcount(a / 64) + 1``), not ``L``.

The backward pass replays the forward once to store the pre-chunk slot states, then walks the
chunks in reverse with the slot gradients in a second fp32 buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.triton_env import dot_precision, interpreter_on

__all__ = ["ChunkInterFunction", "chunk_inter"]

_INTERPRET = interpreter_on()


@triton.jit
def _merge_slot(a, b, L: tl.constexpr):
    # levels.py's advance_level(a, b) = (a ^ b).bit_length(), clamped to the last slot.
    x = a ^ b
    m = 0
    while x > 0:
        x = x >> 1
        m += 1
    return tl.minimum(m, L - 1)


@triton.jit(do_not_specialize=["NC"])
def chunk_inter_fwd_kernel(
    qe, w, kd, u, gam, om, o, ht, hs, live_out,
    chunk_offsets, pos_start, pos_end, NC,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE: tl.constexpr, PREC: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // HV, i_nh % HV
    c_lo = tl.load(chunk_offsets + i_n)
    c_hi = tl.load(chunk_offsets + i_n + 1)
    p0 = tl.load(pos_start + i_n).to(tl.int64)
    p1 = tl.load(pos_end + i_n).to(tl.int64)
    base0 = (p0 // C) * C

    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_ck = m_k[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    p_h = ht + i_nh.to(tl.int64) * L * K * V + o_k[:, None] * V + o_v[None, :]

    if HAS_H0:
        live = tl.full([], (1 << L) - 1, tl.int64)
    else:
        live = tl.full([], 0, tl.int64)
    for j in range(0, c_hi - c_lo):
        i_c = c_lo.to(tl.int64) + j
        cbase = base0 + j * C
        a = tl.maximum(cbase, p0)
        b = tl.minimum(cbase + C, p1)
        mm = _merge_slot(a, b, L)
        if STORE:
            tl.store(live_out + i_c, live)

        r = (i_c * HV + i_h) * C + o_c
        b_qe = tl.load(qe + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_w = tl.load(w + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_kd = tl.load(kd + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_u = tl.load(u + r[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
        b_eg = tl.exp(tl.load(gam + i_c * HV + i_h).to(tl.float32))

        b_o = tl.zeros([C, BV], dtype=tl.float32)
        b_acc = tl.dot(tl.trans(b_kd), b_u, input_precision=PREC).to(tl.float32)
        for l in range(L):
            is_live = ((live >> l) & 1) == 1
            if is_live | (l == mm):
                # a dead slot (only ever the merge target here) holds stale values
                b_s = tl.where(is_live, tl.load(p_h + l * K * V, mask=m_kv, other=0.), 0.)
                if STORE:
                    p_hs = hs + ((i_c * HV + i_h) * L + l) * K * V
                    tl.store(p_hs + o_k[:, None] * V + o_v[None, :], b_s.to(hs.dtype.element_ty), mask=m_kv)
                b_om = tl.load(om + r * L + l).to(tl.float32)
                b_sd = b_s.to(b_qe.dtype)
                b_o += b_om[:, None] * tl.dot(b_qe, b_sd, input_precision=PREC)
                b_ws = tl.dot(b_w, b_sd, input_precision=PREC).to(b_kd.dtype)
                b_s = b_eg * b_s - tl.dot(tl.trans(b_kd), b_ws, input_precision=PREC)
                if l < mm:
                    b_acc += b_s
                elif l == mm:
                    tl.store(p_h + l * K * V, b_acc + b_s, mask=m_kv)
                else:
                    tl.store(p_h + l * K * V, b_s, mask=m_kv)
        tl.store(o + r[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_v[None, :])
        live = (live & ~((tl.full([], 2, tl.int64) << mm) - 1)) | (tl.full([], 1, tl.int64) << mm)
        # the next chunk reads slots other threads of this program just wrote
        tl.debug_barrier()
    # slots merged away were never cleared; the returned state must hold zeros there
    for l in range(L):
        if ((live >> l) & 1) == 0:
            tl.store(p_h + l * K * V, tl.zeros([BK, BV], dtype=tl.float32), mask=m_kv)


@triton.jit(do_not_specialize=["NC"])
def chunk_inter_bwd_kernel(
    qe, w, kd, u, gam, om, do, hs, live_in, dh,
    dqe, dw, dkd, du, dgam, dom,
    chunk_offsets, pos_start, pos_end, NC,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, RELOAD: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // HV, i_nh % HV
    c_lo = tl.load(chunk_offsets + i_n)
    c_hi = tl.load(chunk_offsets + i_n + 1)
    p0 = tl.load(pos_start + i_n).to(tl.int64)
    p1 = tl.load(pos_end + i_n).to(tl.int64)
    base0 = (p0 // C) * C

    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_ck = m_k[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    p_dh = dh + i_nh.to(tl.int64) * L * K * V + o_k[:, None] * V + o_v[None, :]
    # per-V-block partial sums, reduced on the host side
    part = i_v.to(tl.int64) * NC * HV

    for j in range(0, c_hi - c_lo):
        i_c = c_hi.to(tl.int64) - 1 - j
        cbase = base0 + (i_c - c_lo) * C
        a = tl.maximum(cbase, p0)
        b = tl.minimum(cbase + C, p1)
        mm = _merge_slot(a, b, L)
        live = tl.load(live_in + i_c)

        r = (i_c * HV + i_h) * C + o_c
        b_qe = tl.load(qe + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_w = tl.load(w + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_kd = tl.load(kd + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_u = tl.load(u + r[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
        b_do = tl.load(do + r[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(tl.float32)
        b_eg = tl.exp(tl.load(gam + i_c * HV + i_h).to(tl.float32))
        p_qet = qe + r[None, :] * K + o_k[:, None]
        p_wt = w + r[None, :] * K + o_k[:, None]
        if not RELOAD:
            b_qet = tl.trans(b_qe)
            b_wt = tl.trans(b_w)

        # gradient of the merged slot after the chunk; every slot <= mm was folded into it
        b_dm = tl.load(p_dh + mm * K * V, mask=m_kv, other=0.)
        b_xm = tl.dot(b_kd, b_dm.to(b_kd.dtype), input_precision=PREC)
        tl.store(du + r[:, None] * V + o_v[None, :], b_xm.to(du.dtype.element_ty), mask=m_v[None, :])
        b_dkd = tl.dot(b_u, tl.trans(b_dm.to(b_u.dtype)), input_precision=PREC).to(tl.float32)
        b_dw = tl.zeros([C, BK], dtype=tl.float32)
        b_dqe = tl.zeros([C, BK], dtype=tl.float32)
        b_dg = tl.zeros([], dtype=tl.float32)
        tl.debug_barrier()
        for l in range(L):
            if ((live >> l) & 1) == 1:
                if RELOAD:
                    # large K: the five [C, K] operands do not fit shared memory together, so each
                    # is re-read (from L2) right before its one use and its buffer dies with it
                    b_qe = tl.load(qe + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
                    b_w = tl.load(w + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
                    b_kd = tl.load(kd + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
                    # transposed tiles loaded as such: a separate load is never merged with the plain one
                    b_qet = tl.load(p_qet, mask=m_k[:, None], other=0.)
                    b_wt = tl.load(p_wt, mask=m_k[:, None], other=0.)
                p_hs = hs + ((i_c * HV + i_h) * L + l) * K * V
                b_s = tl.load(p_hs + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.).to(tl.float32)
                if l <= mm:
                    b_d = b_dm
                    b_x = b_xm
                else:
                    b_d = tl.load(p_dh + l * K * V, mask=m_kv, other=0.)
                    b_x = tl.dot(b_kd, b_d.to(b_kd.dtype), input_precision=PREC)
                b_om = tl.load(om + r * L + l).to(tl.float32)
                b_sd = b_s.to(b_qe.dtype)
                b_dos = b_om[:, None] * b_do
                # o += omega_l (Qeff S)
                b_dqe += tl.dot(b_dos.to(b_qe.dtype), tl.trans(b_sd), input_precision=PREC)
                b_qs = tl.dot(b_qe, b_sd, input_precision=PREC)
                tl.store(dom + (part * C + r) * L + l, tl.sum(b_qs * b_do, 1))
                # S' = e^gamma S - Kd^T (W S)
                b_dg += b_eg * tl.sum(b_s * b_d)
                b_dw -= tl.dot(b_x.to(b_w.dtype), tl.trans(b_sd), input_precision=PREC)
                b_ws = tl.dot(b_w, b_sd, input_precision=PREC)
                b_dkd -= tl.dot(b_ws.to(b_kd.dtype), tl.trans(b_d.to(b_kd.dtype)), input_precision=PREC)
                b_dnew = b_eg * b_d - tl.dot(b_wt, b_x.to(b_w.dtype), input_precision=PREC) \
                    + tl.dot(b_qet, b_dos.to(b_qe.dtype), input_precision=PREC)
                tl.store(p_dh + l * K * V, b_dnew, mask=m_kv)
        pr = (part + i_c * HV + i_h) * C + o_c
        tl.store(dqe + pr[:, None] * K + o_k[None, :], b_dqe, mask=m_ck)
        tl.store(dw + pr[:, None] * K + o_k[None, :], b_dw, mask=m_ck)
        tl.store(dkd + pr[:, None] * K + o_k[None, :], b_dkd, mask=m_ck)
        tl.store(dgam + part + i_c * HV + i_h, b_dg)
        tl.debug_barrier()


def _blocks(K: int, V: int):
    BK = max(16, triton.next_power_of_2(K))
    num_warps = 8 if BK >= 128 else 4
    # With 8 warps Triton splits the columns of a [64, BV] product over two warpgroups; BV = 16
    # becomes 8-column TF32 wgmma (fp32 inputs), which can read shared memory past its operand
    # (triton-lang/triton#10629): the likely illegal memory access of run 4 (ac67723's BV = 16).
    # Columns past V are masked, so V = 16 just takes a 32-wide block.
    min_bv = 32 if num_warps == 8 else 16
    if _INTERPRET:
        BV = max(min_bv, triton.next_power_of_2(V))
    else:
        BV = max(min_bv, min(triton.next_power_of_2(V), 32 if K >= 128 else 64))
    return BK, BV, num_warps


def chunk_inter_fwd(qe, w, kd, u, gam, om, h0, meta, store: bool = False):
    """Runs the forward sweep; returns ``(o_inter [NC, HV, C, V] fp32, ht, hs, live)``."""
    chunk_offsets, pos_start, pos_end, N, L = meta
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    BK, BV, num_warps = _blocks(K, V)
    o = torch.empty(NC, HV, C, V, dtype=torch.float32, device=qe.device)
    if h0 is None:
        ht = torch.zeros(N, HV, L, K, V, dtype=torch.float32, device=qe.device)
    else:
        ht = h0.detach().to(torch.float32, copy=True).contiguous()
    hs = torch.empty(NC, HV, L, K, V, dtype=qe.dtype, device=qe.device) if store else ht
    live = torch.empty(NC, dtype=torch.int64, device=qe.device) if store else pos_start
    grid = (triton.cdiv(V, BV), N * HV)
    chunk_inter_fwd_kernel[grid](
        qe, w, kd, u, gam, om, o, ht, hs, live,
        chunk_offsets, pos_start, pos_end, NC,
        HV=HV, K=K, V=V, L=L, C=C, BK=BK, BV=BV, HAS_H0=h0 is not None, STORE=store, PREC=dot_precision(qe.dtype),
        num_warps=num_warps,
    )
    return o, ht, hs, live


def chunk_inter_bwd(qe, w, kd, u, gam, om, h0, do, dht, meta):
    chunk_offsets, pos_start, pos_end, N, L = meta
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    BK, BV, num_warps = _blocks(K, V)
    NV = triton.cdiv(V, BV)
    _, _, hs, live = chunk_inter_fwd(qe, w, kd, u, gam, om, h0, meta, store=True)
    dev = qe.device
    if dht is None:
        dh = torch.zeros(N, HV, L, K, V, dtype=torch.float32, device=dev)
    else:
        dh = dht.to(torch.float32, copy=True).contiguous()
    dqe = torch.empty(NV, NC, HV, C, K, dtype=torch.float32, device=dev)
    dw = torch.empty_like(dqe)
    dkd = torch.empty_like(dqe)
    du = torch.empty(NC, HV, C, V, dtype=torch.float32, device=dev)
    dgam = torch.empty(NV, NC, HV, dtype=torch.float32, device=dev)
    dom = torch.zeros(NV, NC, HV, C, L, dtype=torch.float32, device=dev)
    chunk_inter_bwd_kernel[(NV, N * HV)](
        qe, w, kd, u, gam, om, do.contiguous(), hs, live, dh,
        dqe, dw, dkd, du, dgam, dom,
        chunk_offsets, pos_start, pos_end, NC,
        HV=HV, K=K, V=V, L=L, C=C, BK=BK, BV=BV, PREC=dot_precision(qe.dtype), num_warps=num_warps,
        # fp32 at K = 256 needs it (296 KB of shared memory otherwise).  16-bit tiles fit without it
        # (147 KB at K = 256 for triton 3.6, sm_90), and with it bf16 rose to 200 KB: it is the one
        # change between the bf16 K = 128 scan that passed on the H200 and the K = 256 one that crashed
        # there (benchmarks/results/2026-11-30-run5; which kernel faulted is not known)
        RELOAD=BK > 128 and qe.element_size() == 4,
    )
    return dqe.sum(0), dw.sum(0), dkd.sum(0), du, dgam.sum(0), dom.sum(0), dh


class ChunkInterFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, qe, w, kd, u, gam, om, h0, meta):
        o, ht, _, _ = chunk_inter_fwd(qe, w, kd, u, gam, om, h0, meta)
        ctx.save_for_backward(qe, w, kd, u, gam, om, h0)
        ctx.meta = meta
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        qe, w, kd, u, gam, om, h0 = ctx.saved_tensors
        dqe, dw, dkd, du, dgam, dom, dh0 = chunk_inter_bwd(qe, w, kd, u, gam, om, h0, do, dht, ctx.meta)
        return (
            dqe.to(qe.dtype), dw.to(w.dtype), dkd.to(kd.dtype), du.to(u.dtype), dgam.to(gam.dtype),
            dom.to(om.dtype), dh0 if h0 is not None else None, None,
        )


def chunk_inter(qe, w, kd, u, gam, om, h0, meta):
    """``(o_inter, final slots)`` of the sequential sweep; differentiable in every tensor input."""
    qe, w, kd, u, gam, om = (x.contiguous() for x in (qe, w, kd, u, gam, om))
    return ChunkInterFunction.apply(qe, w, kd, u, gam, om, h0, meta)
