"""Backward Triton kernels of chunked scalar-gated log-linear attention (layout: ``chunk_fwd.py``).

Order: ``dnodes`` (what the later queries and the final state read from each Fenwick node),
``chunk_nodes.chunk_fenwick_nodes_bwd`` (carry node gradients down the tree: slot ``j`` then holds
the gradient of chunk ``j``'s own state, also in the input dtype, which ``dv`` / ``dqk`` read), then per chunk ``dv`` and ``dqk`` (dq, dk, d lambda and the per-token gate
gradient ``q . dq - k . dk``), and ``dstate`` for an initial state that requires grad.
The gate gradient needs no decay bookkeeping: the output depends on ``G_t`` only through
``q_t exp(G_t)`` and ``k_t exp(-G_t)``, except the final state's common ``exp(G_end)``.
"""
import triton
import triton.language as tl

from fla.ops.utils.op import exp

from fla_loglinear.ops.log_linear_attn.chunk_fwd import (
    chunk_path_length,
    chunk_row_ptrs,
    chunk_tokens,
    intra_chunk_pairs,
    intra_level_weights,
    load_chunk_meta,
    load_query_chunk,
    load_seq_meta,
)
from fla_loglinear.ops.triton_levels import bit_length, trailing_zeros


@triton.jit(do_not_specialize=["scale"])
def chunk_log_linear_attn_bwd_dnodes_kernel(
    q, do, g, lam, Gb, dht, dF, node_order, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, HAS_DHT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Node e ends at chunk boundary x = A0 + e; the query chunks [x, x + lowbit(x)) read it.  A node's
    # work grows with lowbit(x) (the top node of 64K tokens reads 512 chunks): the programs take the
    # nodes largest first (node_order), every head and block of one node before the next node, so
    # the longest ones start first and the small ones fill in behind them.
    NKV = tl.cdiv(K, BK) * tl.cdiv(V, BV)
    pid = tl.program_id(0).to(tl.int64)
    i_c = tl.load(node_order + pid // (NKV * H)).to(tl.int64)
    i_kv, i_h = (pid % (NKV * H)) // H, pid % H
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    i_g = i_h // (H // G)
    i_n, i_j, bos, T_n, c0, p0 = load_chunk_meta(i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0)
    r, A0 = p0 % BT, p0 // BT
    e = i_j + 1
    x = A0 + e
    E = (p0 + T_n) // BT - A0
    o_i = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_dF = tl.zeros([BK, BV], dtype=tl.float32)
    if e <= E:
        lb = x & (-x)
        lw = tl.minimum(LOG2_BT + 1 + trailing_zeros(x, POS_BITS), L - 1)
        gb_x = tl.load(Gb + (c0 + e) * H + i_h)
        jq_end = tl.minimum(e + lb, (r + T_n + BT - 1) // BT)
        for jq in range(e, jq_end):
            _tok, m_t = chunk_tokens(jq * BT - r, T_n, BT)
            row0 = bos + jq * BT - r  # a scalar 64-bit base; 32-bit offsets inside the tiles
            b_q = tl.load(q + (row0 * (G * K) + i_g * K) + (o_i[:, None] * (G * K) + o_k[None, :]),
                          mask=m_t[:, None] & m_k[None, :], other=0)
            b_do = tl.load(do + (row0 * (H * V) + i_h * V) + (o_i[:, None] * (H * V) + o_v[None, :]),
                           mask=m_t[:, None] & m_v[None, :], other=0)
            b_G = tl.cumsum(tl.load(g + (row0 * H + i_h) + o_i * H, mask=m_t, other=0).to(tl.float32), axis=0)
            b_w = tl.load(lam + (row0 * (H * L) + i_h * L + lw) + o_i * (H * L), mask=m_t, other=0).to(tl.float32)
            b_w = b_w * exp((tl.load(Gb + (c0 + jq) * H + i_h) - gb_x).to(tl.float32) + b_G)
            b_dF += tl.dot(tl.trans((b_q * b_w[:, None]).to(b_q.dtype)), b_do.to(b_q.dtype), input_precision=DOT_PREC)
        b_dF *= scale
        if HAS_DHT:
            A_end = (p0 + T_n) // BT
            if A_end >= x:
                if A_end < x + lb:
                    gb_last = tl.load(Gb + tl.load(chunk_offsets + i_n + 1).to(tl.int64) * H + i_h)
                    p_dht = dht + ((i_n * H + i_h) * L + lw) * (K * V) + o_k[:, None] * V + o_v[None, :]
                    b_dF += exp((gb_last - gb_x).to(tl.float32)) * tl.load(p_dht, mask=m_kv, other=0)
    tl.store(dF + ((c0 + i_j) * H + i_h) * (K * V) + o_k[:, None] * V + o_v[None, :], b_dF, mask=m_kv)


@triton.jit(do_not_specialize=["scale"])
def chunk_log_linear_attn_bwd_dv_kernel(
    q, k, do, g, lam, Gb, dF, dht, dv, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, HAS_DHT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_g = i_h // (H // G)
    i_n, i_j, bos, T_n, c0, p0, A0, A, start = load_query_chunk(
        i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, BT)
    if start >= T_n:
        return
    o_i = tl.arange(0, BT)
    _tok, m_t = chunk_tokens(start, T_n, BT)
    # 64-bit offsets once per program (scalar bases), 32-bit offsets inside the tiles
    row0 = bos + start
    q, k, do, dv = chunk_row_ptrs(q, k, do, dv, row0, i_g, i_h, G, H, K, V)
    g += row0 * H + i_h
    lam += row0 * (H * L) + i_h * L
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_g = tl.load(g + o_i * H, mask=m_t, other=0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    dec_h = exp(tl.sum(b_g, axis=0) - b_G)
    p_end = p0 + T_n
    is_last = (p_end // BT - A0) == i_j
    if HAS_DHT:
        gb_last = tl.load(Gb + tl.load(chunk_offsets + i_n + 1).to(tl.int64) * H + i_h)
        dec_e = exp((gb_last - tl.load(Gb + (c0 + i_j) * H + i_h)).to(tl.float32) - b_G)
        slot = tl.minimum(bit_length((A * BT + o_i) ^ p_end, POS_BITS), L - 1)

    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_kv = m_k[:, None] & m_v[None, :]
        b_q = tl.load(q + o_i[:, None] * (G * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_k = tl.load(k + o_i[:, None] * (G * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
        # a last partial chunk ends no node: its slot was never written by the node scans
        m_own = m_kv & (o_k[:, None] * 0 + i_j < p_end // BT - A0)
        b_dh = tl.load(dF + ((c0 + i_j) * H + i_h) * (K * V) + o_k[:, None] * V + o_v[None, :], mask=m_own, other=0)
        b_dv += tl.dot((b_k * dec_h[:, None]).to(b_k.dtype), b_dh.to(b_k.dtype), input_precision=DOT_PREC)
    if HAS_DHT:
        # The final state holds the keys of the sequence's last chunk by their slots.  One flat
        # (slot, K block) loop whose trip count is zero except in that chunk: written as a slot
        # loop nested in the K loop under a runtime branch, this term came out wrong on an H200
        # (Triton 3.6, fp32, four K blocks) while the interpreter agreed with the reference.
        for i_lk in range(tl.where(is_last, L * tl.cdiv(K, BK), 0)):
            l = i_lk // tl.cdiv(K, BK)
            o_k = (i_lk % tl.cdiv(K, BK)) * BK + tl.arange(0, BK)
            m_k = o_k < K
            b_k = tl.load(k + o_i[:, None] * (G * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
            b_kd = (b_k * tl.where(m_t & (slot == l), dec_e, 0)[:, None]).to(b_k.dtype)
            p_dht = dht + ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :]
            b_dht = tl.load(p_dht, mask=m_k[:, None] & m_v[None, :], other=0).to(b_k.dtype)
            b_dv += tl.dot(b_kd, b_dht, input_precision=DOT_PREC)

    lv, causal, b_D = intra_chunk_pairs(b_G, m_t, BT, LOG2_BT)
    b_W = intra_level_weights(lam + o_i * (H * L), lv, causal, m_t, L, LOG2_BT)
    b_do = tl.load(do + o_i[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
    b_dv += tl.dot(tl.trans((b_A * b_W * b_D * scale).to(b_do.dtype)), b_do, input_precision=DOT_PREC)
    tl.store(dv + o_i[:, None] * (H * V) + o_v[None, :], b_dv.to(dv.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit(do_not_specialize=["scale", "BTOT"])
def chunk_log_linear_attn_bwd_dqk_kernel(
    q, k, v, do, g, lam, F, h0, Gb, dF, dht, dq, dk, dlam, dG,
    chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, scale, BTOT,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr, LP: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr, NV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, HAS_DHT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # dq, dk per value head (GQA groups are summed outside); d lambda and q.dq - k.dk are
    # partial sums over this K block (summed over the NK blocks outside).
    i_c, i_k, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_g = i_h // (H // G)
    i_n, i_j, bos, T_n, c0, p0, A0, A, start = load_query_chunk(
        i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, BT)
    if start >= T_n:
        return
    o_i = tl.arange(0, BT)
    o_l = tl.arange(0, LP)
    _tok, m_t = chunk_tokens(start, T_n, BT)
    # 64-bit offsets once per program (scalar bases), 32-bit offsets inside the tiles
    row0 = bos + start
    q, k, v, do = chunk_row_ptrs(q, k, v, do, row0, i_g, i_h, G, H, K, V)
    g += row0 * H + i_h
    lam += row0 * (H * L) + i_h * L
    dq += (row0 * H + i_h) * K
    dk += (row0 * H + i_h) * K
    dlam += ((i_k * BTOT + row0) * H + i_h) * L
    dG += (i_k * BTOT + row0) * H + i_h
    p_lam = lam + o_i * (H * L)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_q = tl.load(q + o_i[:, None] * (G * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
    b_k = tl.load(k + o_i[:, None] * (G * K) + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
    b_g = tl.load(g + o_i * H, mask=m_t, other=0).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    dec_h = exp(tl.sum(b_g, axis=0) - b_G)
    gb_j = tl.load(Gb + (c0 + i_j) * H + i_h)
    if USE_INITIAL_STATE:
        dec0 = scale * exp((gb_j - tl.load(Gb + c0 * H + i_h)).to(tl.float32) + b_G)
        m0 = bit_length((A * BT + o_i) ^ p0, POS_BITS)
    p_end = p0 + T_n
    is_last = (p_end // BT - A0) == i_j
    if HAS_DHT:
        gb_last = tl.load(Gb + tl.load(chunk_offsets + i_n + 1).to(tl.int64) * H + i_h)
        dec_e = exp((gb_last - gb_j).to(tl.float32) - b_G)
        slot = tl.minimum(bit_length((A * BT + o_i) ^ p_end, POS_BITS), L - 1)

    # do-dependent terms carry `scale` as they are added; the node / final-state gradients have it already.
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dlam = tl.zeros([BT, LP], dtype=tl.float32)
    n_nodes = chunk_path_length(A, A0)
    for i_v in range(NV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_kv = m_k[:, None] & m_v[None, :]
        b_v = tl.load(v + o_i[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_do = tl.load(do + o_i[:, None] * (H * V) + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_do = b_do.to(b_v.dtype)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)
        x = A
        # (no prefetch of the next node as in the forward: this kernel is at the register limit)
        for _ in range(n_nodes):
            e = x - A0
            lw = tl.minimum(LOG2_BT + 1 + trailing_zeros(x, POS_BITS), L - 1)
            dec = scale * exp((gb_j - tl.load(Gb + (c0 + e) * H + i_h)).to(tl.float32) + b_G)
            b_F = tl.load(F + ((c0 + e - 1) * H + i_h) * (K * V) + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0)
            b_dqF = tl.dot(b_do, tl.trans(b_F.to(b_do.dtype)), input_precision=DOT_PREC)
            b_dq += b_dqF * (tl.load(p_lam + lw, mask=m_t, other=0).to(tl.float32) * dec)[:, None]
            b_dlam += tl.where(o_l[None, :] == lw, (dec * tl.sum(b_q * b_dqF, axis=1))[:, None], 0)
            x = x & (x - 1)
        if USE_INITIAL_STATE:
            for l in range(L):
                idx = tl.minimum(tl.maximum(m0, l), L - 1)
                b_S = tl.load(h0 + ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0)
                b_dqS = tl.dot(b_do, tl.trans(b_S.to(b_do.dtype)), input_precision=DOT_PREC)
                b_dq += b_dqS * (tl.load(p_lam + idx, mask=m_t, other=0).to(tl.float32) * dec0)[:, None]
                b_dlam += tl.where(o_l[None, :] == idx[:, None], (dec0 * tl.sum(b_q * b_dqS, axis=1))[:, None], 0)
        # this chunk's keys as read by every later chunk (the node gradients, already scaled)
        # a last partial chunk ends no node: its slot was never written by the node scans
        m_own = m_kv & (o_k[:, None] * 0 + i_j < p_end // BT - A0)
        b_dh = tl.load(dF + ((c0 + i_j) * H + i_h) * (K * V) + o_k[:, None] * V + o_v[None, :], mask=m_own, other=0)
        b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), input_precision=DOT_PREC) * dec_h[:, None]
        if HAS_DHT:
            if is_last:
                for l in range(L):
                    p_dht = dht + ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :]
                    b_dvh = tl.dot(b_v, tl.trans(tl.load(p_dht, mask=m_kv, other=0).to(b_v.dtype)), input_precision=DOT_PREC)
                    b_dk += b_dvh * tl.where(m_t & (slot == l), dec_e, 0)[:, None]

    lv, causal, b_D = intra_chunk_pairs(b_G, m_t, BT, LOG2_BT)
    b_dA = b_dA * (scale * b_D)
    b_R = b_dA * tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
    b_W = intra_level_weights(p_lam, lv, causal, m_t, L, LOG2_BT)
    for lvl in tl.static_range(LOG2_BT + 1):
        b_s = tl.sum(tl.where(lv == lvl, b_R, 0), axis=1)
        b_dlam += tl.where(o_l[None, :] == min(lvl, L - 1), b_s[:, None], 0)
    b_dAm = (b_dA * b_W).to(b_q.dtype)
    b_dq += tl.dot(b_dAm, b_k, input_precision=DOT_PREC)
    b_dk += tl.dot(tl.trans(b_dAm), b_q, input_precision=DOT_PREC)
    b_dG = tl.sum(b_q.to(tl.float32) * b_dq, axis=1) - tl.sum(b_k.to(tl.float32) * b_dk, axis=1)

    m_qk = m_t[:, None] & m_k[None, :]
    tl.store(dq + o_i[:, None] * (H * K) + o_k[None, :], b_dq.to(dq.dtype.element_ty), mask=m_qk)
    tl.store(dk + o_i[:, None] * (H * K) + o_k[None, :], b_dk.to(dk.dtype.element_ty), mask=m_qk)
    p_dlam = dlam + o_i[:, None] * (H * L) + o_l[None, :]
    tl.store(p_dlam, b_dlam, mask=m_t[:, None] & (o_l[None, :] < L))
    tl.store(dG + o_i * H, b_dG, mask=m_t)


@triton.jit(do_not_specialize=["scale"])
def chunk_log_linear_attn_bwd_dstate_kernel(
    q, do, g, lam, Gb, dht, dh0, seq_bos, seq_len, chunk_offsets, pos0, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, HAS_DHT: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Slot l of the initial state is read by every query t with weight
    # lambda_t[min(max(l, bit_length(t ^ p0)), L - 1)] (levels.state_slot_weights).
    i_nh, i_kv, i_l = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    bos, T_n, c0, p0 = load_seq_meta(i_n, seq_bos, seq_len, chunk_offsets, pos0)
    r, A0 = p0 % BT, p0 // BT
    o_i = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    gb0 = tl.load(Gb + c0 * H + i_h)
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    for j in range(0, (r + T_n + BT - 1) // BT):
        tok, m_t = chunk_tokens(j * BT - r, T_n, BT)
        rows = bos + tok
        b_q = tl.load(q + rows[:, None] * (G * K) + i_g * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_do = tl.load(do + rows[:, None] * (H * V) + i_h * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_G = tl.cumsum(tl.load(g + rows * H + i_h, mask=m_t, other=0).to(tl.float32), axis=0)
        idx = tl.minimum(tl.maximum(bit_length(((A0 + j) * BT + o_i) ^ p0, POS_BITS), i_l), L - 1)
        b_w = tl.load(lam + rows * (H * L) + i_h * L + idx, mask=m_t, other=0).to(tl.float32)
        b_w = b_w * exp((tl.load(Gb + (c0 + j) * H + i_h) - gb0).to(tl.float32) + b_G)
        b_dS += tl.dot(tl.trans((b_q * b_w[:, None]).to(b_q.dtype)), b_do.to(b_q.dtype), input_precision=DOT_PREC)
    b_dS *= scale
    if HAS_DHT:
        gb_last = tl.load(Gb + tl.load(chunk_offsets + i_n + 1).to(tl.int64) * H + i_h)
        lo = tl.minimum(tl.maximum(bit_length((p0 + T_n) ^ p0, POS_BITS), i_l), L - 1)
        p_dht = dht + ((i_n * H + i_h) * L + lo) * (K * V) + o_k[:, None] * V + o_v[None, :]
        b_dS += exp((gb_last - gb0).to(tl.float32)) * tl.load(p_dht, mask=m_kv, other=0)
    tl.store(dh0 + ((i_n * H + i_h) * L + i_l) * (K * V) + o_k[:, None] * V + o_v[None, :], b_dS, mask=m_kv)
