"""The chunk-level Fenwick nodes of the scalar-gated op: the forward scan that builds them and the
backward scan that carries their gradients down the tree (layout: ``chunk_fwd.py``).

Node ``x`` (a chunk boundary) covers the ``lowbit(x)`` chunks before ``x``; it is its own last
chunk plus its children ``x - 1, x - 2, x - 4, ...`` (each below ``lowbit(x)``).  A node that is
not a multiple of ``S`` chunks has all its children in its own aligned segment of ``S`` chunks, so
the segments are scanned in parallel; only the segment ends (multiples of ``S``) have children in
other segments, and one short sequential pass over them finishes those.  The backward is the same
split run the other way: segment ends first (their parents are segment ends), then each segment.

Every node is stored in float32 (the scans read it back) and, for 16-bit inputs, once more in the
input dtype: the consumers multiply it in that dtype anyway, and reading half the bytes is most of
their cost at long sequence lengths.
"""
import torch
import triton
import triton.language as tl

from fla.ops.utils.op import exp

from fla_loglinear.ops.log_linear_attn.chunk_fwd import chunk_tokens, load_seq_meta
from fla_loglinear.ops.triton_env import dot_precision

# Chunks per segment of the node scans: 16 chunks of 64 tokens keep the sequential part short
# (T / 1024 steps) while each program still builds 16 nodes.
SCAN_SEGMENT = 16


def _scan_blocks(K: int, V: int) -> tuple[int, int]:
    # 32 x 32 blocks: 4x the programs of 64 x 64 for the sequential passes, and with a 32-row
    # product Triton uses mma.sync, not the TF32 wgmma of triton-lang/triton#10629 (see chunk._blocks).
    return min(32, triton.next_power_of_2(K)), min(32, triton.next_power_of_2(V))


@triton.jit
def _segment_nodes(A0, E, i_s, S: tl.constexpr):
    """The in-call nodes ``e`` (``x = A0 + e``) of segment ``A0 // S + i_s``: ``x`` in ``(sS, (s+1)S]``."""
    s_abs = A0 // S + i_s
    return tl.maximum(s_abs * S + 1 - A0, 1), tl.minimum((s_abs + 1) * S - A0, E)


@triton.jit
def _scan_program(i_nh, i_kv, seq_bos, seq_len, chunk_offsets, pos0,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """What a scan program over (sequence x head ``i_nh``, K x V block ``i_kv``) works on: its head, its
    sequence's meta, ``A0`` and the node count ``E``, and the block's offsets and mask."""
    i_k, i_v = i_kv // tl.cdiv(V, BV), i_kv % tl.cdiv(V, BV)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T_n, c0, p0 = load_seq_meta(i_n, seq_bos, seq_len, chunk_offsets, pos0)
    A0 = p0 // BT
    E = (p0 + T_n) // BT - A0
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    return i_n, i_h, bos, T_n, c0, p0, A0, E, o_k, o_v, o_k[:, None] * V + o_v[None, :], m_kv


@triton.jit
def _add_children(b_h, Gb, F, c0, e, i_h, o_kv, m_kv, step, lim, H: tl.constexpr, KV: tl.constexpr):
    """``b_h`` plus the children ``e - step, e - 2 step, ...`` (below ``lim``) of node ``e``, each
    carried to ``e``; they are nodes this program has just written."""
    gb_e = tl.load(Gb + (c0 + e) * H + i_h)
    while step < lim:
        child = e - step
        gb_c = tl.load(Gb + (c0 + child) * H + i_h)
        # .cg: read from L2, where this program's own earlier stores are
        b_c = tl.load(F + ((c0 + child - 1) * H + i_h) * KV + o_kv, mask=m_kv, other=0, cache_modifier=".cg")
        b_h += exp((gb_e - gb_c).to(tl.float32)) * b_c
        step = step * 2
    return b_h


@triton.jit
def chunk_fenwick_nodes_fwd_kernel(
    k, v, g, Gb, F, Fl, seq_bos, seq_len, chunk_offsets, pos0,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, S: tl.constexpr,
    STORE_LOW: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # One program walks one segment's chunks in order: each node is its last chunk plus its smaller
    # children, which this program has just written; a segment end gets only the children of its segment.
    i_n, i_h, bos, T_n, c0, p0, A0, E, o_k, o_v, o_kv, m_kv = _scan_program(
        tl.program_id(0).to(tl.int64), tl.program_id(1), seq_bos, seq_len, chunk_offsets, pos0, H, K, V, BT, BK, BV)
    i_g = i_h // (H // G)
    r = p0 % BT
    e_lo, e_hi = _segment_nodes(A0, E, tl.program_id(2), S)
    o_i = tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    for e in range(e_lo, e_hi + 1):
        _tok, m_t = chunk_tokens((e - 1) * BT - r, T_n, BT)
        row0 = bos + (e - 1) * BT - r  # a scalar 64-bit base; 32-bit offsets inside the tiles
        b_k = tl.load(k + (row0 * (G * K) + i_g * K) + (o_i[:, None] * (G * K) + o_k[None, :]),
                      mask=m_t[:, None] & m_k[None, :], other=0)
        b_v = tl.load(v + (row0 * (H * V) + i_h * V) + (o_i[:, None] * (H * V) + o_v[None, :]),
                      mask=m_t[:, None] & m_v[None, :], other=0)
        b_g = tl.load(g + (row0 * H + i_h) + o_i * H, mask=m_t, other=0).to(tl.float32)
        b_G = tl.cumsum(b_g, axis=0)
        b_kd = (b_k * exp(tl.sum(b_g, axis=0) - b_G)[:, None]).to(b_k.dtype)
        b_h = tl.dot(tl.trans(b_kd), b_v, input_precision=DOT_PREC)
        x = A0 + e
        # children in other segments (S chunks back and more) come in the segment-end pass
        lim = tl.minimum(tl.minimum(x & (-x), e), S)
        b_h = _add_children(b_h, Gb, F, c0, e, i_h, o_kv, m_kv, e * 0 + 1, lim, H, K * V)
        o_F = ((c0 + e - 1) * H + i_h) * (K * V) + o_kv
        tl.store(F + o_F, b_h, mask=m_kv)
        if STORE_LOW:
            if x % S != 0:
                tl.store(Fl + o_F, b_h.to(Fl.dtype.element_ty), mask=m_kv)
        # the next nodes read this one back
        tl.debug_barrier()


@triton.jit
def chunk_fenwick_nodes_fwd_ends_kernel(
    Gb, F, Fl, seq_bos, seq_len, chunk_offsets, pos0,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, S: tl.constexpr, STORE_LOW: tl.constexpr,
):
    # The segment ends in order: add the children of other segments (S, 2S, 4S, ... chunks back),
    # which are earlier segment ends this program has just finished.
    i_n, i_h, bos, T_n, c0, p0, A0, E, o_k, o_v, o_kv, m_kv = _scan_program(
        tl.program_id(0).to(tl.int64), tl.program_id(1), seq_bos, seq_len, chunk_offsets, pos0, H, K, V, BT, BK, BV)
    for m in range(A0 // S + 1, (A0 + E) // S + 1):
        x = m * S
        e = x - A0
        o_F = ((c0 + e - 1) * H + i_h) * (K * V) + o_kv
        b_h = tl.load(F + o_F, mask=m_kv, other=0)
        b_h = _add_children(b_h, Gb, F, c0, e, i_h, o_kv, m_kv, e * 0 + S, tl.minimum(x & (-x), e), H, K * V)
        tl.store(F + o_F, b_h, mask=m_kv)
        if STORE_LOW:
            tl.store(Fl + o_F, b_h.to(Fl.dtype.element_ty), mask=m_kv)
        tl.debug_barrier()


@triton.jit
def _carry_to_parent(Gb, dF, dFl, c0, A0, E, e, i_h, o_kv, m_kv, H: tl.constexpr, KV: tl.constexpr,
                     STORE_LOW: tl.constexpr):
    """``dF[e] += exp(G_parent - G_e) dF[parent]`` (parent ``x + lowbit(x)``, when in the call)."""
    x = A0 + e
    ep = x + (x & (-x)) - A0
    p_d = dF + ((c0 + e - 1) * H + i_h) * KV + o_kv
    b_d = tl.load(p_d, mask=m_kv, other=0)
    if ep <= E:
        decay = exp((tl.load(Gb + (c0 + ep) * H + i_h) - tl.load(Gb + (c0 + e) * H + i_h)).to(tl.float32))
        b_d += decay * tl.load(dF + ((c0 + ep - 1) * H + i_h) * KV + o_kv, mask=m_kv, other=0, cache_modifier=".cg")
        tl.store(p_d, b_d, mask=m_kv)
    if STORE_LOW:
        tl.store(dFl + ((c0 + e - 1) * H + i_h) * KV + o_kv, b_d.to(dFl.dtype.element_ty), mask=m_kv)


@triton.jit
def chunk_fenwick_nodes_bwd_ends_kernel(
    Gb, dF, dFl, seq_bos, seq_len, chunk_offsets, pos0,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, S: tl.constexpr, STORE_LOW: tl.constexpr,
):
    # Node x is a term of its parent x + lowbit(x) only; a segment end's parent is a later segment end.
    i_n, i_h, bos, T_n, c0, p0, A0, E, o_k, o_v, o_kv, m_kv = _scan_program(
        tl.program_id(0).to(tl.int64), tl.program_id(1), seq_bos, seq_len, chunk_offsets, pos0, H, K, V, BT, BK, BV)
    m_lo, m_hi = A0 // S + 1, (A0 + E) // S
    for i in range(0, m_hi - m_lo + 1):
        _carry_to_parent(Gb, dF, dFl, c0, A0, E, (m_hi - i) * S - A0, i_h, o_kv, m_kv, H, K * V, STORE_LOW)
        # the children read this node back
        tl.debug_barrier()


@triton.jit
def chunk_fenwick_nodes_bwd_kernel(
    Gb, dF, dFl, seq_bos, seq_len, chunk_offsets, pos0,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, S: tl.constexpr, STORE_LOW: tl.constexpr,
):
    # Inside one segment, downwards: every parent is in the segment (its end is already final).
    i_n, i_h, bos, T_n, c0, p0, A0, E, o_k, o_v, o_kv, m_kv = _scan_program(
        tl.program_id(0).to(tl.int64), tl.program_id(1), seq_bos, seq_len, chunk_offsets, pos0, H, K, V, BT, BK, BV)
    e_lo, e_hi = _segment_nodes(A0, E, tl.program_id(2), S)
    for i in range(0, e_hi - e_lo + 1):
        e = e_hi - i
        if (A0 + e) % S != 0:
            _carry_to_parent(Gb, dF, dFl, c0, A0, E, e, i_h, o_kv, m_kv, H, K * V, STORE_LOW)
        tl.debug_barrier()


def _low_copy(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """Where the nodes' input-dtype copy goes: a new tensor for 16-bit inputs, else ``x`` itself."""
    if dtype == torch.float32:
        return x, False
    return torch.empty_like(x, dtype=dtype), True


def chunk_fenwick_nodes_fwd(k, v, g, Gb, layout, BT: int, S: int = SCAN_SEGMENT):
    """``(F, Fl)``: the ``[NT, H, K, V]`` nodes in float32 and in ``k.dtype`` (slot ``e - 1`` holds node ``e``).

    For float32 inputs ``Fl`` is ``F``.  Slots past a sequence's last node are never read.
    """
    G, K = k.shape[-2:]
    H, V = v.shape[-2:]
    BK, BV = _scan_blocks(K, V)
    F = torch.empty(layout.NT, H, K, V, dtype=torch.float32, device=k.device)
    Fl, low = _low_copy(F, k.dtype)
    NKV = triton.cdiv(K, BK) * triton.cdiv(V, BV)
    consts = dict(H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, S=S, STORE_LOW=low)
    chunk_fenwick_nodes_fwd_kernel[(layout.N * H, NKV, layout.max_chunks // S + 2)](
        k, v, g, Gb, F, Fl, *layout.meta[1:], G=G, DOT_PREC=dot_precision(k.dtype), **consts
    )
    chunk_fenwick_nodes_fwd_ends_kernel[(layout.N * H, NKV)](Gb, F, Fl, *layout.meta[1:], **consts)
    return F, Fl


def chunk_fenwick_nodes_bwd(Gb, dF, layout, BT: int, dtype: torch.dtype, S: int = SCAN_SEGMENT):
    """Carries the node gradients ``dF`` down the tree in place (slot ``j`` then holds the gradient
    of chunk ``j``'s own state) and returns them in ``dtype`` (``dF`` itself for float32)."""
    NT, H, K, V = dF.shape
    BK, BV = _scan_blocks(K, V)
    dFl, low = _low_copy(dF, dtype)
    NKV = triton.cdiv(K, BK) * triton.cdiv(V, BV)
    consts = dict(H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, S=S, STORE_LOW=low)
    chunk_fenwick_nodes_bwd_ends_kernel[(layout.N * H, NKV)](Gb, dF, dFl, *layout.meta[1:], **consts)
    chunk_fenwick_nodes_bwd_kernel[(layout.N * H, NKV, layout.max_chunks // S + 2)](
        Gb, dF, dFl, *layout.meta[1:], **consts
    )
    return dFl
