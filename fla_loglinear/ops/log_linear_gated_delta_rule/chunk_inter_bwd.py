"""The sequential half of the chunked log-linear gated delta rule, backward.

Like fla's for its one state, the backward keeps only the recurrence sequential: it replays the
forward once to store the pre-chunk slot states (no output, :func:`.chunk_inter_fwd.chunk_inter_replay`)
and walks the chunks in reverse carrying the slot gradients in an fp32 buffer and storing each
chunk's post-chunk gradients (three products per live slot), then computes the gradients of every
input from those two stores in a kernel that is parallel over chunks.  The reverse scan needs no
slot state, only the live masks and merge slots the forward recorded, so on the GPU it can run
beside the replay (``plan.replay_beside``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_inter_fwd import (
    _n_late,
    _seq_chunks,
    _slot_tile,
    chunk_inter_replay,
)
from fla_loglinear.ops.log_linear_gated_delta_rule.plan import (
    GDNLaunchPlan,
    grads_launches,
    out_blocks,
    reloads_operands,
)
from fla_loglinear.ops.log_linear_gated_delta_rule.streams import Fork
from fla_loglinear.ops.triton_env import dot_precision

__all__ = ["chunk_inter_bwd"]


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
    _, i_h, c_lo, c_hi = _seq_chunks(i_nh, chunk_offsets, HV)

    o_c, o_k, o_v, m_k, m_v, m_ck, m_kv = _slot_tile(i_v, K, V, C, BK, BV)
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
    # H200 has (at K = 128); see grads_launches.
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

    fork = Fork(dev, plan.streams and plan.replay_beside, plan.lead_priority)
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
