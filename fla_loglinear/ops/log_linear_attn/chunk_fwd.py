"""Forward Triton kernels of chunked scalar-gated log-linear attention.

Layout shared by every kernel of this op (see ``chunk.py`` for how it is built):
chunk ``j`` of sequence ``n`` covers the absolute positions ``[(A0 + j) * BT, (A0 + j + 1) * BT)``
clipped to the sequence, with ``A0 = p0 // BT`` and ``p0`` the sequence's start position, so
chunks are aligned to absolute positions and the first one may be partial.  Row ``i`` of a
chunk is in-call token ``j * BT + i - p0 % BT``.

Keys of earlier chunks are read through chunk-level Fenwick nodes: node ``e`` (``e >= 1``, stored
in chunk slot ``e - 1``) ends at the absolute chunk boundary ``x = A0 + e`` and holds the keys of
the ``lowbit(x)`` chunks before ``x`` (only the in-call ones), carried to ``x``.  Query chunk ``A``
reads the nodes ``A, A - lowbit(A), ...`` down to ``A0``; node ``x`` is Fenwick level
``LOG2_BT + trailing_zeros(x) + 1`` for every query of that chunk.  Keys before ``p0`` come from
the initial FenwickState through ``levels.state_slot_weights``' rule.

Nodes are built by ``chunk_nodes.py``; the kernels here read their input-dtype copy ``F``.

``Gb[c, h]`` (float64) is the sum of the gates of every chunk slot before global slot ``c``; only
differences within one sequence are used, so long sequences keep their decay precision.
"""
import triton
import triton.language as tl

from fla.ops.utils.op import exp

from fla_loglinear.ops.triton_levels import bit_length, trailing_zeros


@triton.jit
def load_chunk_meta(i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0):
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    i_j = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos, T_n, c0, p0 = load_seq_meta(i_n, seq_bos, seq_len, chunk_offsets, pos0)
    return i_n, i_j, bos, T_n, c0, p0


@triton.jit
def load_seq_meta(i_n, seq_bos, seq_len, chunk_offsets, pos0):
    bos = tl.load(seq_bos + i_n).to(tl.int64)
    T_n = tl.load(seq_len + i_n).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    p0 = tl.load(pos0 + i_n).to(tl.int64)
    return bos, T_n, c0, p0


@triton.jit
def load_query_chunk(i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, BT: tl.constexpr):
    """``load_chunk_meta`` plus where query chunk ``i_c`` lies: ``A0``, its absolute chunk ``A`` and
    its first in-call token ``start`` (negative for a partial first chunk, ``>= T_n`` past the end)."""
    i_n, i_j, bos, T_n, c0, p0 = load_chunk_meta(i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0)
    A0 = p0 // BT
    return i_n, i_j, bos, T_n, c0, p0, A0, A0 + i_j, i_j * BT - p0 % BT


@triton.jit
def chunk_tokens(start, T_n, BT: tl.constexpr):
    """The in-call tokens ``start + [0, BT)`` of a chunk and which of them are in the sequence."""
    tok = start + tl.arange(0, BT)
    return tok, (tok >= 0) & (tok < T_n)


@triton.jit
def chunk_row_ptrs(qk0, qk1, hv0, hv1, row0, i_g, i_h, G: tl.constexpr, H: tl.constexpr,
                   K: tl.constexpr, V: tl.constexpr):
    """Two ``[.., G, K]`` and two ``[.., H, V]`` token-row tensors moved to row ``row0`` of their head
    (a scalar 64-bit offset each: the tiles then add 32-bit offsets)."""
    o_qk = row0 * (G * K) + i_g * K
    o_hv = row0 * (H * V) + i_h * V
    return qk0 + o_qk, qk1 + o_qk, hv0 + o_hv, hv1 + o_hv


@triton.jit
def chunk_path_length(A, A0):
    """How many nodes query chunk ``A`` reads: ``A, A - lowbit(A), ...`` while above ``A0``.

    Counted first so that the node loops are ``for`` loops, which Triton software-pipelines
    (a ``while`` loop would wait for each node's load before issuing the next)."""
    n = A * 0
    x = A
    while x > A0:
        n += 1
        x = x & (x - 1)
    return n


@triton.jit
def intra_chunk_pairs(b_G, m_t, BT: tl.constexpr, LOG2_BT: tl.constexpr):
    """For the chunk's (query, key) pairs ``[BT, BT]``: the in-chunk levels ``lv`` (the chunk is
    aligned, so those of the local indices), the ``causal`` mask and the decay ``exp(G_i - G_j)``."""
    o_i = tl.arange(0, BT)
    lv = bit_length(o_i[:, None] ^ o_i[None, :], LOG2_BT + 1)
    causal = (o_i[:, None] >= o_i[None, :]) & m_t[:, None] & m_t[None, :]
    return lv, causal, exp(tl.where(causal, b_G[:, None] - b_G[None, :], float("-inf")))


@triton.jit
def intra_level_weights(p_lam, lv, causal, m_t, L: tl.constexpr, LOG2_BT: tl.constexpr):
    """``lambda_t[min(lv, L - 1)]`` for the in-chunk levels ``lv [BT, BT]`` (0 off ``causal``).

    One ``[BT]`` load per level (``LOG2_BT + 1`` of them) and a select, not a ``[BT, BT]`` gather:
    the gather's 64-bit pointer block alone took a quarter of the registers of the kernels using it."""
    b_W = tl.zeros(lv.shape, dtype=tl.float32)
    for lvl in tl.static_range(LOG2_BT + 1):
        b_l = tl.load(p_lam + min(lvl, L - 1), mask=m_t, other=0).to(tl.float32)
        b_W = tl.where(lv == lvl, b_l[:, None], b_W)
    return tl.where(causal, b_W, 0)


@triton.jit
def chunk_gate_sum_kernel(g, gsum, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, H: tl.constexpr, BT: tl.constexpr):
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_j, bos, T_n, c0, p0 = load_chunk_meta(i_c, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0)
    tok, m_t = chunk_tokens(i_j * BT - p0 % BT, T_n, BT)
    b_g = tl.load(g + (bos + tok) * H + i_h, mask=m_t, other=0).to(tl.float32)
    tl.store(gsum + i_c * H + i_h, tl.sum(b_g, axis=0))


@triton.jit(do_not_specialize=["scale"])
def chunk_log_linear_attn_fwd_o_kernel(
    q, k, v, g, lam, F, h0, Gb, o, chunk_indices, seq_bos, seq_len, chunk_offsets, pos0, scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, DOT_PREC: tl.constexpr,
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
    q, k, v, o = chunk_row_ptrs(q, k, v, o, row0, i_g, i_h, G, H, K, V)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_lam = lam + row0 * (H * L) + i_h * L + o_i * (H * L)

    b_G = tl.cumsum(tl.load(g + row0 * H + i_h + o_i * H, mask=m_t, other=0).to(tl.float32), axis=0)
    gb_j = tl.load(Gb + (c0 + i_j) * H + i_h)
    if USE_INITIAL_STATE:
        dec0 = exp((gb_j - tl.load(Gb + c0 * H + i_h)).to(tl.float32) + b_G)
        # levels.state_slot_weights: slot l of the state at p0 has level max(l, bit_length(t ^ p0))
        m0 = bit_length((A * BT + o_i) ^ p0, POS_BITS)

    n_nodes = chunk_path_length(A, A0)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_qk = m_t[:, None] & m_k[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        o_qk = o_i[:, None] * (G * K) + o_k[None, :]
        b_q = tl.load(q + o_qk, mask=m_qk, other=0)
        b_k = tl.load(k + o_qk, mask=m_qk, other=0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PREC)
        o_kv = o_k[:, None] * V + o_v[None, :]
        x = A
        b_F = tl.load(F + ((c0 + x - A0 - 1) * H + i_h) * (K * V) + o_kv, mask=m_kv & (o_kv * 0 + x > A0), other=0)
        for _ in range(n_nodes):
            e = x - A0
            x = x & (x - 1)
            # the next node's tile is requested before this one's product, which hides its latency
            # (the mask compares a block: the interpreter takes no scalar condition in a mask)
            b_Fn = tl.load(F + ((c0 + x - A0 - 1) * H + i_h) * (K * V) + o_kv, mask=m_kv & (o_kv * 0 + x > A0), other=0)
            lw = tl.minimum(LOG2_BT + 1 + trailing_zeros(e + A0, POS_BITS), L - 1)
            b_w = tl.load(p_lam + lw, mask=m_t, other=0).to(tl.float32)
            b_w = b_w * exp((gb_j - tl.load(Gb + (c0 + e) * H + i_h)).to(tl.float32) + b_G)
            b_o += tl.dot((b_q * b_w[:, None]).to(b_q.dtype), b_F.to(b_q.dtype), input_precision=DOT_PREC)
            b_F = b_Fn
        if USE_INITIAL_STATE:
            for l in range(L):
                b_w = tl.load(p_lam + tl.minimum(tl.maximum(m0, l), L - 1), mask=m_t, other=0).to(tl.float32) * dec0
                b_S = tl.load(h0 + ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0)
                b_o += tl.dot((b_q * b_w[:, None]).to(b_q.dtype), b_S.to(b_q.dtype), input_precision=DOT_PREC)

    lv, causal, b_D = intra_chunk_pairs(b_G, m_t, BT, LOG2_BT)
    b_W = intra_level_weights(p_lam, lv, causal, m_t, L, LOG2_BT)
    o_tv = o_i[:, None] * (H * V) + o_v[None, :]
    b_v = tl.load(v + o_tv, mask=m_t[:, None] & m_v[None, :], other=0)
    b_o += tl.dot((b_A * b_W * b_D).to(b_v.dtype), b_v, input_precision=DOT_PREC)
    tl.store(o + o_tv, (b_o * scale).to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_log_linear_attn_fwd_final_state_kernel(
    k, v, g, Gb, F, h0, ht, seq_bos, seq_len, chunk_offsets, pos0,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr, L: tl.constexpr,
    BT: tl.constexpr, LOG2_BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_INITIAL_STATE: tl.constexpr, POS_BITS: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # The state at p_end = p0 + T_n relative to the next query p_end: the nodes on p_end's chunk
    # path, the keys of p_end's own (partial) chunk by their levels, and the moved initial slots.
    i_nh, i_v, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    i_g = i_h // (H // G)
    bos, T_n, c0, p0 = load_seq_meta(i_n, seq_bos, seq_len, chunk_offsets, pos0)
    r, A0 = p0 % BT, p0 // BT
    p_end = p0 + T_n
    A_end = p_end // BT
    e_end = A_end - A0
    gb_last = tl.load(Gb + tl.load(chunk_offsets + i_n + 1).to(tl.int64) * H + i_h)
    g_end = (gb_last - tl.load(Gb + c0 * H + i_h)).to(tl.float32)
    o_i = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]

    tok, m_t = chunk_tokens(e_end * BT - r, T_n, BT)
    rows = bos + tok
    b_k = tl.load(k + rows[:, None] * (G * K) + i_g * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
    b_v = tl.load(v + rows[:, None] * (H * V) + i_h * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
    b_G = tl.cumsum(tl.load(g + rows * H + i_h, mask=m_t, other=0).to(tl.float32), axis=0)
    dec = exp((gb_last - tl.load(Gb + (c0 + e_end) * H + i_h)).to(tl.float32) - b_G)
    slot = tl.minimum(bit_length((A_end * BT + o_i) ^ p_end, POS_BITS), L - 1)
    m_end = bit_length(p_end ^ p0, POS_BITS)
    for l in range(L):
        b_S = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_INITIAL_STATE:
            for li in range(L):
                if tl.minimum(tl.maximum(m_end, li), L - 1) == l:
                    p_h0 = h0 + ((i_n * H + i_h) * L + li) * (K * V) + o_k[:, None] * V + o_v[None, :]
                    b_S += exp(g_end) * tl.load(p_h0, mask=m_kv, other=0).to(tl.float32)
        x = A_end
        while x > A0:
            if tl.minimum(LOG2_BT + 1 + trailing_zeros(x, POS_BITS), L - 1) == l:
                gb_x = tl.load(Gb + (c0 + x - A0) * H + i_h)
                p_F = F + ((c0 + x - A0 - 1) * H + i_h) * (K * V) + o_k[:, None] * V + o_v[None, :]
                b_S += exp((gb_last - gb_x).to(tl.float32)) * tl.load(p_F, mask=m_kv, other=0)
            x = x & (x - 1)
        b_kd = (b_k * tl.where(m_t & (slot == l), dec, 0)[:, None]).to(b_k.dtype)
        b_S += tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PREC)
        tl.store(ht + ((i_n * H + i_h) * L + l) * (K * V) + o_k[:, None] * V + o_v[None, :], b_S, mask=m_kv)
