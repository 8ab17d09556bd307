"""The sequential half of the chunked log-linear gated delta rule: every Fenwick slot across chunks.

One program owns one (sequence, value head, block of V columns) and walks its chunks in
order.  The slots ``[L, K, BV]`` live in the fp32 state buffer (too large for registers at
useful L); per chunk each *live* slot ``S`` is read once to add ``omega_l * (Qeff S)`` to the
output and is carried to the chunk end as ``e^gamma S - Kd^T (W S)`` (see
:mod:`.chunk_local`).  Slots ``<= m`` then merge into slot ``min(m, L - 1)`` together with the
chunk's keys ``Kd^T U`` (``m = advance_level(a, b)`` of levels.py).  A bit mask tracks which
slots can be non-zero, so the work per chunk is the number of live slots (about
``popcount(a / 64) + 1``), not ``L``.

The backward pass, like fla's for its one state, keeps only the recurrence sequential: it replays
the forward once to store the pre-chunk slot states (no output) and walks the chunks in reverse
carrying the slot gradients in an fp32 buffer and storing each chunk's post-chunk gradients
(three products per live slot), then computes the gradients of every input from those two
stores in a kernel that is parallel over chunks.  The reverse scan needs no slot state, only the
live masks and merge slots the forward recorded, so on the GPU it runs beside the replay where the
sweeps have at most one program per SM.  With few programs the forward, too, can run in segments
(:func:`segments_forward`): each segment's sweep stores its slots, and a parallel kernel computes that
segment's output from them beside the next segment's sweep.  Before (results run 15) one sequential kernel
did all eight products per live slot and wrote per-V-block partial sums.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.log_linear_gated_delta_rule.plan import (
    GDNLaunchPlan,
    device_index,
    grads_launches,
    out_blocks,
    reloads_operands,
)
from fla_loglinear.ops.triton_env import dot_precision
from fla_loglinear.ops.triton_levels import merge_slot

__all__ = ["chunk_inter_fwd", "chunk_inter_bwd"]


@triton.jit
def _n_late(n):
    # how many of a sequence's n chunks (its last ones) the backward's scan walks in its first launch
    return (n + 1) // 2


@triton.jit(do_not_specialize=["NC", "seg_lo", "seg_hi"])
def chunk_inter_fwd_kernel(
    qe, w, kd, u, gam, om, oi, o, ht, hs, live_out, merge_out, late_out,
    chunk_offsets, pos_start, pos_end, NC, seg_lo, seg_hi, carry,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE: tl.constexpr, META: tl.constexpr,
    PREC: tl.constexpr, PREFETCH: tl.constexpr, SEG: tl.constexpr,
):
    # SEG: one segment of the sweep, chunks seg_lo <= j < seg_hi of each sequence, with STORE writing
    # the segment's slots to hs [N, seg_hi - seg_lo, HV, L, K, V]; the slots stay in ht and the live
    # mask in carry (one per program) from one segment's launch to the next.
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

    n = c_hi - c_lo
    if HAS_H0:
        live = tl.full([], (1 << L) - 1, tl.int64)
    else:
        live = tl.full([], 0, tl.int64)
    j0 = 0
    j1 = n
    if SEG:
        i_p = i_nh.to(tl.int64) * tl.num_programs(0) + i_v
        j0 = seg_lo
        j1 = tl.minimum(seg_hi, n)
        if seg_lo > 0:
            live = tl.load(carry + i_p)
    for j in range(j0, j1):
        i_c = c_lo.to(tl.int64) + j
        cbase = base0 + j * C
        a = tl.maximum(cbase, p0)
        b = tl.minimum(cbase + C, p1)
        mm = merge_slot(a, b, L)
        if META:
            # every program stores the same values; the backward's scan starts from them
            tl.store(live_out + i_c, live)
            tl.store(merge_out + i_c, mm)
            # the later half of the sequence's chunks, which the backward's scan finishes first
            tl.store(late_out + i_c, (j >= n - _n_late(n)).to(tl.int8))

        r = (i_c * HV + i_h) * C + o_c
        t = (i_c * C + o_c) * HV + i_h  # token rows (the op's output and its gradient)
        b_qe = tl.load(qe + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_w = tl.load(w + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_kd = tl.load(kd + r[:, None] * K + o_k[None, :], mask=m_ck, other=0.)
        b_u = tl.load(u + r[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
        b_eg = tl.exp(tl.load(gam + i_c * HV + i_h).to(tl.float32))

        b_o = tl.zeros([C, BV], dtype=tl.float32)
        b_acc = tl.dot(tl.trans(b_kd), b_u, input_precision=PREC).to(tl.float32)
        if PREFETCH:
            # (a scalar condition joins a block mask through tl.where: `&` fails in the interpreter)
            b_nx = tl.load(p_h, mask=tl.where((live & 1) == 1, m_kv, False), other=0.)
        for l in range(L):
            is_live = ((live >> l) & 1) == 1
            if PREFETCH:
                # the next slot's load is issued before this slot's products, so that its latency
                # overlaps them (the slots of a chunk are independent until the merge)
                b_cur = b_nx
                b_nx = tl.load(p_h + (l + 1) * K * V, mask=tl.where(((live >> (l + 1)) & 1) == 1, m_kv, False),
                               other=0.)
            if is_live | (l == mm):
                # a dead slot (only ever the merge target here) holds stale values
                if PREFETCH:
                    b_s = b_cur
                else:
                    b_s = tl.where(is_live, tl.load(p_h + l * K * V, mask=m_kv, other=0.), 0.)
                if STORE:
                    if SEG:
                        p_hs = hs + (((i_n * (seg_hi - seg_lo) + j - seg_lo).to(tl.int64) * HV + i_h) * L + l) * K * V
                    else:
                        p_hs = hs + ((i_c * HV + i_h) * L + l) * K * V
                    tl.store(p_hs + o_k[:, None] * V + o_v[None, :], b_s.to(hs.dtype.element_ty), mask=m_kv)
                b_sd = b_s.to(b_qe.dtype)
                if not STORE:  # the backward's replay needs the slots, not the output
                    b_om = tl.load(om + r * L + l).to(tl.float32)
                    b_o += b_om[:, None] * tl.dot(b_qe, b_sd, input_precision=PREC)
                b_ws = tl.dot(b_w, b_sd, input_precision=PREC).to(b_kd.dtype)
                b_s = b_eg * b_s - tl.dot(tl.trans(b_kd), b_ws, input_precision=PREC)
                if l < mm:
                    b_acc += b_s
                elif l == mm:
                    tl.store(p_h + l * K * V, b_acc + b_s, mask=m_kv)
                else:
                    tl.store(p_h + l * K * V, b_s, mask=m_kv)
        if not STORE:
            # the chunk-local part joins here, so the op's output is written once, in its dtype
            b_o += tl.load(oi + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(tl.float32)
            tl.store(o + t[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_v[None, :])
        live = (live & ~((tl.full([], 2, tl.int64) << mm) - 1)) | (tl.full([], 1, tl.int64) << mm)
        # the next chunk reads slots other threads of this program just wrote
        tl.debug_barrier()
    last = True
    if SEG:
        tl.store(carry + i_p, live)
        last = (seg_lo < n) & (seg_hi >= n)
    if last:
        # slots merged away were never cleared; the returned state must hold zeros there
        for l in range(L):
            if ((live >> l) & 1) == 0:
                tl.store(p_h + l * K * V, tl.zeros([BK, BV], dtype=tl.float32), mask=m_kv)


@triton.jit(do_not_specialize=["seg_lo", "S"])
def chunk_inter_out_kernel(
    qe, om, oi, o, hs, live_in, chunk_offsets, seg_lo, S,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
):
    # The output of one segment's chunks from the slots its sweep stored (chunk_inter_fwd_kernel with
    # SEG and STORE): o = o_intra + sum over live slots of omega_l (Qeff S_l), one program per (chunk
    # of the segment, sequence x head), the V loop inside.  It runs beside the next segment's sweep.
    i_s, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // HV, i_nh % HV
    c_lo = tl.load(chunk_offsets + i_n)
    c_hi = tl.load(chunk_offsets + i_n + 1)
    j = seg_lo + i_s
    if j < c_hi - c_lo:
        i_c = c_lo.to(tl.int64) + j
        live = tl.load(live_in + i_c)
        o_c = tl.arange(0, C)
        o_k = tl.arange(0, BK)
        m_k = o_k < K
        r = (i_c * HV + i_h) * C + o_c
        t = (i_c * C + o_c) * HV + i_h
        b_qe = tl.load(qe + r[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.)
        base = ((i_n * S + i_s).to(tl.int64) * HV + i_h) * L * K * V
        for i_v in range(tl.cdiv(V, BV)):
            o_v = i_v * BV + tl.arange(0, BV)
            m_v = o_v < V
            b_o = tl.load(oi + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(tl.float32)
            for l in range(L):
                if ((live >> l) & 1) == 1:
                    b_s = tl.load(hs + base + l * K * V + o_k[:, None] * V + o_v[None, :],
                                  mask=m_k[:, None] & m_v[None, :], other=0.)
                    b_om = tl.load(om + r * L + l).to(tl.float32)
                    b_o += b_om[:, None] * tl.dot(b_qe, b_s.to(b_qe.dtype), input_precision=PREC)
            tl.store(o + t[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_v[None, :])


@triton.jit(do_not_specialize=["NC"])
def chunk_inter_bwd_kernel(
    qe, w, kd, om, do, gam, live_in, merge_in, dh, dhs, du,
    chunk_offsets, NC,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, RELOAD: tl.constexpr, PREFETCH: tl.constexpr,
    PART: tl.constexpr,
):
    # Only what is sequential: the slot gradients, chunk by chunk in reverse (three products per
    # live slot).  Each chunk's post-chunk slot gradients go to dhs for chunk_inter_grads_kernel.
    # PART 1 walks the later half of each sequence's chunks (the first it reaches), PART 2 the rest,
    # PART 0 all; dh carries the slot gradients from one launch to the next.
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // HV, i_nh % HV
    c_lo = tl.load(chunk_offsets + i_n)
    c_hi = tl.load(chunk_offsets + i_n + 1)

    o_c = tl.arange(0, C)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_ck = m_k[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    p_dh = dh + i_nh.to(tl.int64) * L * K * V + o_kv

    n_late = _n_late(c_hi - c_lo)
    j_lo = n_late if PART == 2 else 0
    j_hi = n_late if PART == 1 else c_hi - c_lo
    for j in range(j_lo, j_hi):
        i_c = c_hi.to(tl.int64) - 1 - j
        mm = tl.load(merge_in + i_c)
        live = tl.load(live_in + i_c)
        r = (i_c * HV + i_h) * C + o_c
        t = (i_c * C + o_c) * HV + i_h  # token rows of the output gradient
        p_dhs = dhs + (i_c * HV + i_h) * L * K * V + o_kv
        p_kd = kd + r[:, None] * K + o_k[None, :]
        p_wt = w + r[None, :] * K + o_k[:, None]
        p_qet = qe + r[None, :] * K + o_k[:, None]
        b_do = tl.load(do + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(tl.float32)
        b_eg = tl.exp(tl.load(gam + i_c * HV + i_h).to(tl.float32))
        if not RELOAD:
            b_kd = tl.load(p_kd, mask=m_ck, other=0.)
            b_wt = tl.load(p_wt, mask=m_k[:, None], other=0.)
            b_qet = tl.load(p_qet, mask=m_k[:, None], other=0.)

        # every slot <= mm was folded into slot mm: they share its gradient after the chunk
        b_dm = tl.load(p_dh + mm * K * V, mask=m_kv, other=0.)
        tl.store(p_dhs + mm * K * V, b_dm.to(dhs.dtype.element_ty), mask=m_kv)
        if RELOAD:
            # large K: the three [C, K] operands do not fit shared memory together, so each is
            # re-read (from L2) right before its use
            b_kd = tl.load(p_kd, mask=m_ck, other=0.)
        b_xm = tl.dot(b_kd, b_dm.to(b_kd.dtype), input_precision=PREC)
        tl.store(du + r[:, None] * V + o_v[None, :], b_xm.to(du.dtype.element_ty), mask=m_v[None, :])
        if RELOAD:
            b_wt = tl.load(p_wt, mask=m_k[:, None], other=0.)
        # S' = e^gamma S - Kd^T (W S): the part of dS shared by the merged slots
        b_gm = b_eg * b_dm - tl.dot(b_wt, b_xm.to(b_wt.dtype), input_precision=PREC)
        tl.debug_barrier()
        if PREFETCH:
            b_nx = tl.zeros([BK, BV], dtype=tl.float32)
        for l in range(L):
            if PREFETCH:
                # as in the forward: the next loaded slot's read overlaps this slot's products
                b_cur = b_nx
                b_nx = tl.load(p_dh + (l + 1) * K * V,
                               mask=tl.where((((live >> (l + 1)) & 1) == 1) & (l + 1 > mm), m_kv, False), other=0.)
            if ((live >> l) & 1) == 1:
                if l <= mm:
                    b_new = b_gm
                else:
                    if PREFETCH:
                        b_d = b_cur
                    else:
                        b_d = tl.load(p_dh + l * K * V, mask=m_kv, other=0.)
                    tl.store(p_dhs + l * K * V, b_d.to(dhs.dtype.element_ty), mask=m_kv)
                    if RELOAD:
                        b_kd = tl.load(p_kd, mask=m_ck, other=0.)
                    b_x = tl.dot(b_kd, b_d.to(b_kd.dtype), input_precision=PREC)
                    if RELOAD:
                        b_wt = tl.load(p_wt, mask=m_k[:, None], other=0.)
                    b_new = b_eg * b_d - tl.dot(b_wt, b_x.to(b_wt.dtype), input_precision=PREC)
                # o += omega_l (Qeff S)
                b_dos = tl.load(om + r * L + l).to(tl.float32)[:, None] * b_do
                if RELOAD:
                    b_qet = tl.load(p_qet, mask=m_k[:, None], other=0.)
                b_new += tl.dot(b_qet, b_dos.to(b_qet.dtype), input_precision=PREC)
                tl.store(p_dh + l * K * V, b_new, mask=m_kv)
        # the next chunk reads slot gradients other threads of this program just wrote
        tl.debug_barrier()


@triton.jit
def chunk_inter_grads_kernel(
    qe, w, kd, u, gam, om, do, hs, dhs, live_in, merge_in, late_in,
    dqe, dw, dkd, dgam, dom,
    HV: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, C: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr,
    DQ: tl.constexpr, DW: tl.constexpr, DKD: tl.constexpr, PART: tl.constexpr,
):
    # Everything else of the backward, one program per (chunk, head): the chunks are independent
    # once the slot states (hs, the forward replay) and their gradients (dhs) are stored, so this
    # runs at full occupancy and sums over V inside (no per-V-block partial results).  DQ: the
    # gradients through the output (dqe, domega, dgamma); DW, DKD: through the transition.  fp32
    # tiles take one launch per group: all products at once need more shared memory than the
    # H200 has (run 17: 352 KB at K = 128); see grads_launches.
    # PART 1 / 2: only the chunks in / not in the later half of their sequence (see the scan's PART)
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    if PART == 0:
        mine = True
    else:
        mine = (tl.load(late_in + i_c) == 1) == (PART == 1)
    if mine:
        live = tl.load(live_in + i_c)
        mm = tl.load(merge_in + i_c)
        o_c = tl.arange(0, C)
        o_k = tl.arange(0, BK)
        m_k = o_k < K
        m_ck = m_k[None, :]
        r = (i_c * HV + i_h) * C + o_c
        t = (i_c * C + o_c) * HV + i_h  # token rows of the output gradient
        p_ck = r[:, None] * K + o_k[None, :]
        base = (i_c * HV + i_h) * L * K * V
        if DQ:
            b_eg = tl.exp(tl.load(gam + i_c * HV + i_h).to(tl.float32))
            b_qe = tl.load(qe + p_ck, mask=m_ck, other=0.)
            b_dqe = tl.zeros([C, BK], dtype=tl.float32)
            b_dg = tl.zeros([], dtype=tl.float32)
        if DW:
            b_kd = tl.load(kd + p_ck, mask=m_ck, other=0.)
            b_dw = tl.zeros([C, BK], dtype=tl.float32)
        if DKD:
            b_w = tl.load(w + p_ck, mask=m_ck, other=0.)
            b_dkd = tl.zeros([C, BK], dtype=tl.float32)
            for i_v in range(tl.cdiv(V, BV)):
                o_v = i_v * BV + tl.arange(0, BV)
                m_v = o_v < V
                # the chunk's keys Kd^T U enter slot mm
                b_u = tl.load(u + r[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.)
                b_dm = tl.load(dhs + base + mm * K * V + o_k[:, None] * V + o_v[None, :],
                               mask=m_k[:, None] & m_v[None, :], other=0.)
                b_dkd += tl.dot(b_u, tl.trans(b_dm.to(b_u.dtype)), input_precision=PREC)
        for l in range(L):
            if ((live >> l) & 1) == 1:
                if DQ:
                    b_om = tl.load(om + r * L + l).to(tl.float32)
                    b_dom = tl.zeros([C], dtype=tl.float32)
                # slots <= mm were merged: their gradient after the chunk is slot mm's
                l_d = tl.where(l <= mm, mm, l)
                for i_v in range(tl.cdiv(V, BV)):
                    o_v = i_v * BV + tl.arange(0, BV)
                    m_v = o_v < V
                    m_kv = m_k[:, None] & m_v[None, :]
                    o_kv = o_k[:, None] * V + o_v[None, :]
                    b_s = tl.load(hs + base + l * K * V + o_kv, mask=m_kv, other=0.)
                    b_d = tl.load(dhs + base + l_d * K * V + o_kv, mask=m_kv, other=0.)
                    b_sd = b_s.to(qe.dtype.element_ty)
                    b_dd = b_d.to(qe.dtype.element_ty)
                    if DQ:
                        b_do = tl.load(do + t[:, None] * V + o_v[None, :], mask=m_v[None, :], other=0.).to(tl.float32)
                        b_dqe += tl.dot((b_om[:, None] * b_do).to(b_qe.dtype), tl.trans(b_sd), input_precision=PREC)
                        b_dom += tl.sum(tl.dot(b_qe, b_sd, input_precision=PREC) * b_do, 1)
                        # S' = e^gamma S - Kd^T (W S)
                        b_dg += b_eg * tl.sum(b_s.to(tl.float32) * b_d.to(tl.float32))
                    if DW:
                        b_x = tl.dot(b_kd, b_dd, input_precision=PREC)
                        b_dw -= tl.dot(b_x.to(b_kd.dtype), tl.trans(b_sd), input_precision=PREC)
                    if DKD:
                        b_ws = tl.dot(b_w, b_sd, input_precision=PREC)
                        b_dkd -= tl.dot(b_ws.to(b_w.dtype), tl.trans(b_dd), input_precision=PREC)
                if DQ:
                    tl.store(dom + r * L + l, b_dom)
        if DQ:
            tl.store(dqe + p_ck, b_dqe.to(dqe.dtype.element_ty), mask=m_ck)
            tl.store(dgam + i_c * HV + i_h, b_dg)
        if DW:
            tl.store(dw + p_ck, b_dw.to(dw.dtype.element_ty), mask=m_ck)
        if DKD:
            tl.store(dkd + p_ck, b_dkd.to(dkd.dtype.element_ty), mask=m_ck)


def _initial_slots(h0, meta, qe, u):
    """The fp32 slots ``[N, HV, L, K, V]`` the forward sweep starts from and carries in place."""
    if h0 is not None:
        return h0.detach().to(torch.float32, copy=True).contiguous()
    N, L = meta[3], meta[4]
    return torch.zeros(N, qe.shape[1], L, qe.shape[-1], u.shape[-1], dtype=torch.float32, device=qe.device)


def _launch_sweep(qe, w, kd, u, gam, om, has_h0, meta, ht, plan: GDNLaunchPlan, o_intra=None, o=None, hs=None,
                  chunk_meta=None, seg=None):
    """Launches the forward sweep over the slots ``ht``: the output ``o`` (given ``o_intra``), or with
    ``hs`` the slots before every chunk; ``chunk_meta`` = ``(live, merge, late)`` recorded if given;
    ``seg = (seg_lo, seg_hi, carry)``: one segment of it, ``hs`` then the segment's buffer."""
    chunk_offsets, pos_start, pos_end, N, L = meta
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    BK, BV = out_blocks(K, V)[0], plan.sweep_bv
    store = hs is not None
    live, merge, late = (pos_start,) * 3 if chunk_meta is None else chunk_meta
    seg_lo, seg_hi, carry = (0, 0, pos_start) if seg is None else seg
    chunk_inter_fwd_kernel[(triton.cdiv(V, BV), N * HV)](
        qe, w, kd, u, gam, om, ht if store else o_intra, ht if store else o, ht, hs if store else ht,
        live, merge, late, chunk_offsets, pos_start, pos_end, NC, seg_lo, seg_hi, carry,
        HV=HV, K=K, V=V, L=L, C=C, BK=BK, BV=BV, HAS_H0=has_h0, STORE=store, META=chunk_meta is not None,
        PREC=dot_precision(qe.dtype), PREFETCH=plan.prefetch, SEG=seg is not None, num_warps=plan.sweep_warps,
    )


def chunk_inter_fwd(qe, w, kd, u, gam, om, h0, meta, o_intra, out_dtype, plan: GDNLaunchPlan):
    """Runs the forward sweep; returns ``(o, ht, chunk_meta)``: the slots' part of the output added to
    the chunk-local part ``o_intra`` ``[NC * C, HV, V]`` (padded token rows) in ``out_dtype``, the
    final slots, and ``(live, merge, late)`` ``[NC]``: each chunk's live-slot mask, merge slot, and
    whether it is in the later half of its sequence (what the backward's scan walks)."""
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    dev = qe.device
    o = torch.empty(NC * C, HV, V, dtype=out_dtype, device=dev)
    chunk_meta = (torch.empty(NC, dtype=torch.int64, device=dev), torch.empty(NC, dtype=torch.int32, device=dev),
                  torch.empty(NC, dtype=torch.int8, device=dev))
    ht = _initial_slots(h0, meta, qe, u)
    if plan.segment_chunks:
        _segmented_fwd(qe, w, kd, u, gam, om, h0 is not None, meta, ht, o_intra, o, chunk_meta, plan)
    else:
        _launch_sweep(qe, w, kd, u, gam, om, h0 is not None, meta, ht, plan, o_intra, o, chunk_meta=chunk_meta)
    return o, ht, chunk_meta


def chunk_inter_replay(qe, w, kd, u, gam, om, h0, meta, hs, plan: GDNLaunchPlan):
    """The forward sweep again, computing no output: writes every chunk's pre-chunk slots into ``hs``
    ``[NC, HV, L, K, V]`` (the operands' dtype; only the live slots and the merge slot are written)."""
    _launch_sweep(qe, w, kd, u, gam, om, h0 is not None, meta, _initial_slots(h0, meta, qe, u), plan, hs=hs)


def _segmented_fwd(qe, w, kd, u, gam, om, has_h0, meta, ht, o_intra, o, chunk_meta, plan: GDNLaunchPlan):
    """The forward sweep in segments that store their slots, each segment's output computed by a
    parallel kernel beside the next segment's sweep (the output's products leave the sequential chain)."""
    chunk_offsets, N = meta[0], meta[3]
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    L = meta[4]
    dev = qe.device
    S = min(plan.segment_chunks, NC)
    n_seg = triton.cdiv(NC, S)
    carry = torch.empty(N * HV * triton.cdiv(V, plan.sweep_bv), dtype=torch.int64, device=dev)
    bufs = [torch.empty(N * S, HV, L, K, V, dtype=qe.dtype, device=dev) for _ in range(min(2, n_seg))]
    oBK, oBV, o_warps = out_blocks(K, V)
    fork = _Fork(dev, plan.streams, plan.lead_priority)
    read = [None, None]
    with fork.chain():
        for i in range(n_seg):
            buf = bufs[i % 2]
            # the segment two back must have been read out of this buffer
            fork.wait(read[i % 2])
            _launch_sweep(qe, w, kd, u, gam, om, has_h0, meta, ht, plan, hs=buf, chunk_meta=chunk_meta,
                          seg=(i * S, (i + 1) * S, carry))
            swept = fork.mark()
            fork.run_beside(lambda buf=buf, i=i: chunk_inter_out_kernel[(S, N * HV)](
                qe, om, o_intra, o, buf, chunk_meta[0], chunk_offsets, i * S, S,
                HV=HV, K=K, V=V, L=L, C=C, BK=oBK, BV=oBV, PREC=dot_precision(qe.dtype), num_warps=o_warps,
            ), after=swept)
            read[i % 2] = fork.mark_beside()
    fork.join()


@functools.lru_cache(maxsize=None)
def _side_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(index)


@functools.lru_cache(maxsize=None)
def _lead_stream(index: int) -> torch.cuda.Stream:
    # the highest priority torch gives (it clamps the number): when the sequential chain's next launch
    # and the side stream's many-program kernel both wait for room on the SMs, the chain's go first
    return torch.cuda.Stream(index, priority=-100)


class _Fork:
    """A side CUDA stream forked from the current one, for launches that can share the SMs with the
    current stream's; elsewhere (or ``on`` false) everything runs in program order.  Whatever the side
    stream touches must be allocated before the fork: the current stream waits for the side stream at
    :meth:`join`, and nothing is freed before."""

    def __init__(self, device: torch.device, on: bool, lead_priority: bool):
        self.on = on and device.type == "cuda"
        if self.on:
            index = device_index(device)
            self.origin = torch.cuda.current_stream(device)
            self.main = _lead_stream(index) if lead_priority else self.origin
            self.side = _side_stream(index)
            self.main.wait_stream(self.origin)
            self.side.wait_stream(self.origin)

    def chain(self):
        """A context in which launches go to the fork's main stream (with ``lead_priority`` one of the
        highest priority, so that the side stream's kernels never hold up the sequential chain)."""
        return torch.cuda.stream(self.main) if self.on else contextlib.nullcontext()

    def run_beside(self, fn, after=None):
        """``fn()`` on the side stream, after the current stream's event ``after`` if given."""
        if not self.on:
            return fn()
        with torch.cuda.stream(self.side):
            if after is not None:
                self.side.wait_event(after)
            fn()

    def mark(self):
        """An event at this point of the current stream (``None`` when not forked)."""
        return self.main.record_event() if self.on else None

    def mark_beside(self):
        """An event at this point of the side stream (``None`` when not forked)."""
        return self.side.record_event() if self.on else None

    def wait(self, event):
        """The current stream waits for ``event`` (from :meth:`mark_beside`; ``None``: nothing to wait for)."""
        if self.on and event is not None:
            self.main.wait_event(event)

    def join(self):
        if self.on:
            self.main.wait_stream(self.side)
            self.origin.wait_stream(self.main)


def chunk_inter_bwd(qe, w, kd, u, gam, om, h0, do, dht, meta, chunk_meta, plan: GDNLaunchPlan):
    """Gradients of the sweeps: the forward replayed to store the slots and the reverse scan of the slot
    gradients (both sequential over chunks), then the per-chunk gradients of every input from both
    (parallel over chunks).  The scan needs no slot state, only ``chunk_meta``, so with
    ``plan.replay_beside`` the replay runs beside it on a side stream; with ``plan.split_grads`` the
    scan stops half-way and the gradients of the chunks it has done run beside its second half once
    the replay is done."""
    chunk_offsets, pos_start, pos_end, N, L = meta
    live, merge, late = chunk_meta
    NC, HV, C, K = qe.shape
    V = u.shape[-1]
    dev = qe.device
    do = do.contiguous()
    if dht is None:
        dh = torch.zeros(N, HV, L, K, V, dtype=torch.float32, device=dev)
    else:
        dh = dht.to(torch.float32, copy=True).contiguous()
    consts = dict(HV=HV, K=K, V=V, L=L, C=C, PREC=dot_precision(qe.dtype))
    # only the slots live in a chunk and its merge slot are written, and only those are read
    hs = torch.empty(NC, HV, L, K, V, dtype=qe.dtype, device=dev)
    dhs = torch.empty_like(hs)
    du = torch.empty_like(u)
    dqe, dw, dkd = torch.empty_like(qe), torch.empty_like(w), torch.empty_like(kd)
    dgam = torch.empty_like(gam)
    dom = torch.zeros_like(om)
    BK, BV = out_blocks(K, V)[0], plan.sweep_bv
    gBK, _, g_warps = out_blocks(K, V)

    def scan(part):
        chunk_inter_bwd_kernel[(triton.cdiv(V, BV), N * HV)](
            qe, w, kd, om, do, gam, live, merge, dh, dhs, du, chunk_offsets, NC,
            RELOAD=reloads_operands(BK, qe.dtype), PREFETCH=plan.prefetch, BK=BK, BV=BV, PART=part,
            num_warps=plan.sweep_warps, **consts,
        )

    def grads(part):
        for launch in grads_launches(qe.dtype):
            chunk_inter_grads_kernel[(NC, HV)](
                qe, w, kd, u, gam, om, do, hs, dhs, live, merge, late, dqe, dw, dkd, dgam, dom,
                BK=gBK, BV=plan.grads_bv, num_warps=g_warps, PART=part, **launch, **consts,
            )

    fork = _Fork(dev, plan.streams and plan.replay_beside, plan.lead_priority)
    split = plan.split_grads
    with fork.chain():
        fork.run_beside(lambda: chunk_inter_replay(qe, w, kd, u, gam, om, h0, meta, hs, plan))
        if split:
            scan(1)
            later_half_done = fork.mark()
            # in program order (off CUDA) this runs before the scan's second half, the earliest the side
            # stream can, so the interpreter tests catch a chunk read before its slot gradients are final
            fork.run_beside(lambda: grads(1), after=later_half_done)
            scan(2)
        else:
            scan(0)
    fork.join()
    grads(2 if split else 0)
    return dqe, dw, dkd, du, dgam, dom, dh
