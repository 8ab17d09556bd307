"""The sequential half of the chunked log-linear gated delta rule, forward: every Fenwick slot across chunks.

One program owns one (sequence, value head, block of V columns) and walks its chunks in
order.  The slots ``[L, K, BV]`` live in the fp32 state buffer (too large for registers at
useful L); per chunk each *live* slot ``S`` is read once to add ``omega_l * (Qeff S)`` to the
output and is carried to the chunk end as ``e^gamma S - Kd^T (W S)`` (see
:mod:`.chunk_local`).  Slots ``<= m`` then merge into slot ``min(m, L - 1)`` together with the
chunk's keys ``Kd^T U`` (``m = advance_level(a, b)`` of levels.py).  A bit mask tracks which
slots can be non-zero, so the work per chunk is the number of live slots (about
``popcount(a / 64) + 1``), not ``L``.

With few programs the forward can run in segments (``plan.segment_chunks``): each segment's sweep
stores its slots, and a parallel kernel computes that segment's output from them beside the next
segment's sweep.  The backward is in :mod:`.chunk_inter_bwd`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.log_linear_gated_delta_rule.plan import GDNLaunchPlan, out_blocks
from fla_loglinear.ops.log_linear_gated_delta_rule.streams import Fork
from fla_loglinear.ops.triton_env import dot_precision
from fla_loglinear.ops.triton_levels import merge_slot

__all__ = ["chunk_inter_fwd", "chunk_inter_replay"]


@triton.jit
def _n_late(n):
    # how many of a sequence's n chunks (its last ones) the backward's scan walks in its first launch
    return (n + 1) // 2


@triton.jit
def _seq_chunks(i_nh, chunk_offsets, HV: tl.constexpr):
    """Program row ``i_nh``'s sequence ``i_n`` and value head ``i_h``, and the sequence's chunks ``[c_lo, c_hi)``."""
    i_n, i_h = i_nh // HV, i_nh % HV
    return i_n, i_h, tl.load(chunk_offsets + i_n), tl.load(chunk_offsets + i_n + 1)


@triton.jit
def _slot_tile(i_v, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Offsets and masks of a scan program's tiles: chunk rows ``o_c``, the whole (padded) K in one
    block ``o_k``, value block ``i_v``'s columns ``o_v``; ``m_ck`` masks a ``[C, BK]`` tile, ``m_kv`` a slot's."""
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    return tl.arange(0, C), o_k, o_v, m_k, m_v, m_k[None, :], m_k[:, None] & m_v[None, :]


@triton.jit
def _store_merged(p_h, b_acc, b_s, l, mm, m_kv, K: tl.constexpr, V: tl.constexpr):
    """Slot ``l``'s new state ``b_s`` when slots ``<= mm`` merge into slot ``mm`` (slots go in order):
    below ``mm`` it joins the sum ``b_acc`` (returned), at ``mm`` the sum is stored, above it ``b_s``."""
    if l < mm:
        b_acc += b_s
    elif l == mm:
        tl.store(p_h + l * K * V, b_acc + b_s, mask=m_kv)
    else:
        tl.store(p_h + l * K * V, b_s, mask=m_kv)
    return b_acc


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
    i_n, i_h, c_lo, c_hi = _seq_chunks(i_nh, chunk_offsets, HV)
    p0 = tl.load(pos_start + i_n).to(tl.int64)
    p1 = tl.load(pos_end + i_n).to(tl.int64)
    base0 = (p0 // C) * C

    o_c, o_k, o_v, _, m_v, m_ck, m_kv = _slot_tile(i_v, K, V, C, BK, BV)
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
                b_acc = _store_merged(p_h, b_acc, b_s, l, mm, m_kv, K, V)
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
    i_n, i_h, c_lo, c_hi = _seq_chunks(i_nh, chunk_offsets, HV)
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
    fork = Fork(dev, plan.streams, plan.lead_priority)
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
