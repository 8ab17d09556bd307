"""Chunked scalar-gated log-linear attention (Mamba-2 form): the public op and its autograd Function.

``O(T log T)`` work and ``O(L)`` state per sequence: inside a chunk of ``BT`` tokens the
hierarchical mask is applied directly; earlier chunks are read through chunk-level Fenwick nodes
(about one ``K x V`` state per chunk, built by one scan) and the initial FenwickState.  The kernels
live in ``chunk_fwd.py`` / ``chunk_bwd.py``; their layout is described in ``chunk_fwd.py``.
"""
from __future__ import annotations

import torch
import triton
from fla.ops.utils.index import prepare_lens

from fla_loglinear.ops.aligned_chunks import (
    aligned_chunk_counts,
    aligned_chunk_table,
    token_offsets,
)
from fla_loglinear.ops.log_linear_attn.args import check_log_linear_attn_args
from fla_loglinear.ops.log_linear_attn.chunk_bwd import (
    chunk_log_linear_attn_bwd_dnodes_kernel,
    chunk_log_linear_attn_bwd_dqk_kernel,
    chunk_log_linear_attn_bwd_dstate_kernel,
    chunk_log_linear_attn_bwd_dv_kernel,
)
from fla_loglinear.ops.log_linear_attn.chunk_fwd import (
    chunk_gate_sum_kernel,
    chunk_log_linear_attn_fwd_final_state_kernel,
    chunk_log_linear_attn_fwd_o_kernel,
)
from fla_loglinear.ops.log_linear_attn.chunk_nodes import (
    SCAN_SEGMENT,
    chunk_fenwick_nodes_bwd,
    chunk_fenwick_nodes_fwd,
)
from fla_loglinear.ops.log_linear_attn.naive import naive_chunk_log_linear_attn
from fla_loglinear.ops.triton_env import dot_precision, use_triton
from fla_loglinear.state import FenwickState

__all__ = ["chunk_log_linear_attn"]

CHUNK_SIZE = 64
# smallest K and V the kernels' tl.dot tiles take
MIN_HEAD_DIM = 16
# Positions are bounded by 2 ** POS_BITS in the kernels' bit-length loops.
POS_BITS = 48


class ChunkLayout:
    """Where every chunk of every sequence lives; built once per call (like fla's chunk indices).

    ``chunk_indices [NT, 2]`` (sequence, chunk of the sequence); ``seq_bos [N]`` first row of each
    sequence in the flattened ``[B * T]`` tokens; ``seq_len [N]``; ``chunk_offsets [N + 1]`` first
    chunk slot of each sequence; ``pos0 [N]`` start positions (on the device, never read back);
    ``max_chunks`` the most slots of one sequence.
    A sequence gets ``cdiv(T_n, BT)`` slots, one more when it starts from a state: a start ``p0``
    that is not a multiple of ``BT`` shifts its tokens across one extra aligned chunk.
    """

    def __init__(
        self, B: int, T: int, cu_seqlens: torch.Tensor | None, positions: torch.Tensor | None, BT: int, device
    ):
        # Built on the device from host-known sizes: no host-to-device copy, no read-back.
        i64 = dict(dtype=torch.int64, device=device)
        if cu_seqlens is None:
            offsets, cu_seqlens = token_offsets(B, T, None), torch.arange(B + 1, **i64) * T
        else:
            # the argument checks already read the offsets back, as fla's varlen ops do
            offsets = cu_seqlens.tolist()
        # p0 % BT is not known on the host: a lead of BT leaves room for any start
        lead = BT if positions is not None else 0
        counts = aligned_chunk_counts(offsets, lead, BT)
        self.N, self.NT, self.max_chunks = len(counts), sum(counts), max(counts)
        self.seq_bos = cu_seqlens[:-1].to(torch.int64)
        self.seq_len = prepare_lens(cu_seqlens).to(torch.int64)
        chunk_indices, self.chunk_offsets = aligned_chunk_table(cu_seqlens, lead, BT, self.NT)
        self.chunk_indices = chunk_indices.to(torch.int32)
        if positions is None:
            self.pos0 = torch.zeros(self.N, **i64)
        else:
            self.pos0 = positions.to(**i64).contiguous()

    def node_order(self, BT: int) -> torch.Tensor:
        """``[NT]`` int32 chunk slots by decreasing size of the node they end (``lowbit`` of the
        absolute boundary ``x = p0 // BT + j + 1``), on the device."""
        seq, local = self.chunk_indices.long().unbind(1)
        x = self.pos0[seq] // BT + local + 1
        return torch.argsort(x & -x, descending=True, stable=True).to(torch.int32)

    @property
    def meta(self):
        return self.chunk_indices, self.seq_bos, self.seq_len, self.chunk_offsets, self.pos0


def _blocks(K: int, V: int) -> tuple[int, int]:
    BK, BV = min(64, triton.next_power_of_2(K)), min(64, triton.next_power_of_2(V))
    # With 8 warps (see _warps) a 16-column fp32 product splits into 8-column TF32 wgmma tiles,
    # which read past their shared-memory operand on Hopper (triton-lang/triton#10629); columns
    # past V are masked, so a wider block only costs idle lanes.
    if BK >= 64:
        BV = max(BV, 32)
    return BK, BV


def _warps(BT: int, K: int, V: int, dtype: torch.dtype) -> int:
    """Warps of the per-chunk kernels (fwd_o, bwd_dv, bwd_dqk), which hold several [BT, BT] and
    [BT, BK] fp32 tiles.

    For 16-bit inputs 4 warps beat 8 on the H200 (run 12's sweep: 6.26 vs 7.80 ms per fwd+bwd at
    4K); they are used only where the GPU tests passed with them: 64-wide K and V blocks and
    K <= 128 (run 13).  At K = 256, V = 32 (a 32-wide V block, four K blocks) 4 warps gave wrong
    outputs on triton 3.6 in bf16 and fp16, so every other shape keeps the 8 warps it was verified
    with; with 4 warps and 64 x 64 fp32 tiles ptxas spills.
    """
    BK, BV = _blocks(K, V)
    if dtype in (torch.bfloat16, torch.float16) and BK == 64 and BV == 64 and K <= 128:
        return 4
    return 8 if BT * BK >= 4096 else 4


def chunk_gate_prefix(g: torch.Tensor, layout: ChunkLayout, BT: int) -> torch.Tensor:
    """``[NT + 1, H]`` float64: the gates summed over every chunk slot before each slot."""
    H = g.shape[-1]
    gsum = torch.empty(layout.NT, H, dtype=torch.float32, device=g.device)
    chunk_gate_sum_kernel[(layout.NT, H)](g, gsum, *layout.meta, H=H, BT=BT)
    Gb = torch.zeros(layout.NT + 1, H, dtype=torch.float64, device=g.device)
    Gb[1:] = _prefix_sum_rows(gsum)
    return Gb


def _prefix_sum_rows(x: torch.Tensor) -> torch.Tensor:
    """Inclusive float64 prefix sums down the rows of ``x [rows, H]``.

    Scanned along the last dimension of the transpose: torch's scan over the outer dimension of a
    ``[32768, 16]`` float64 tensor runs a few threads per column and took 2 ms on the H200.
    """
    return x.t().to(torch.float64).contiguous().cumsum(1).t()


def chunk_log_linear_attn_fwd(q, k, v, g, level_scales, h0, output_final_state, layout: ChunkLayout, scale, BT, S):
    G, K = q.shape[-2:]
    H, V = v.shape[-2:]
    L = level_scales.shape[-1]
    BK, BV = _blocks(K, V)
    Gb = chunk_gate_prefix(g, layout, BT)
    F, Fl = chunk_fenwick_nodes_fwd(k, v, g, Gb, layout, BT, S)
    o = torch.empty_like(v)
    consts = dict(H=H, G=G, K=K, V=V, L=L, BT=BT, LOG2_BT=BT.bit_length() - 1, BK=BK, BV=BV,
                  USE_INITIAL_STATE=h0 is not None, POS_BITS=POS_BITS, DOT_PREC=dot_precision(q.dtype))
    chunk_log_linear_attn_fwd_o_kernel[(layout.NT, triton.cdiv(V, BV), H)](
        q, k, v, g, level_scales, Fl, h0, Gb, o, *layout.meta, scale, **consts, num_warps=_warps(BT, K, V, q.dtype)
    )
    ht = None
    if output_final_state:
        ht = torch.empty(layout.N, H, L, K, V, dtype=torch.float32, device=q.device)
        chunk_log_linear_attn_fwd_final_state_kernel[(layout.N * H, triton.cdiv(V, BV), triton.cdiv(K, BK))](
            k, v, g, Gb, F, h0, ht, *layout.meta[1:], **consts
        )
    return o, ht


def _reverse_cumsum(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Suffix sums within each sequence of ``x [rows, H]`` (float64: one pass over all rows)."""
    # not fla's chunk_global_cumsum(reverse=True): it sums in fp32 chunk by chunk, this in float64
    prefix = torch.zeros(x.shape[0] + 1, x.shape[1], dtype=torch.float64, device=x.device)
    prefix[1:] = _prefix_sum_rows(x)
    seq = torch.repeat_interleave(torch.arange(layout.N, device=x.device), layout.seq_len, output_size=x.shape[0])
    # the sum from row i to its sequence's end, inclusive
    return (prefix[(layout.seq_bos + layout.seq_len)[seq]] - prefix[:-1]).to(torch.float32)


def chunk_log_linear_attn_bwd(q, k, v, g, level_scales, h0, ht, do, dht, layout: ChunkLayout, scale, BT, S, need_dh0):
    B, T, G, K = q.shape
    H, V = v.shape[-2:]
    L = level_scales.shape[-1]
    N, NT = layout.N, layout.NT
    BK, BV = _blocks(K, V)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    consts = dict(H=H, G=G, K=K, V=V, L=L, BT=BT, LOG2_BT=BT.bit_length() - 1, BK=BK, BV=BV,
                  USE_INITIAL_STATE=h0 is not None, POS_BITS=POS_BITS, DOT_PREC=dot_precision(q.dtype))
    Gb = chunk_gate_prefix(g, layout, BT)
    _, Fl = chunk_fenwick_nodes_fwd(k, v, g, Gb, layout, BT, S)

    # Gradients of the nodes: what the later queries (and the final state) read from each,
    # then carried down the tree so that slot j holds the gradient of chunk j's own state.
    dF = torch.empty(NT, H, K, V, dtype=torch.float32, device=q.device)
    chunk_log_linear_attn_bwd_dnodes_kernel[(NT * NV * NK * H,)](
        q, do, g, level_scales, Gb, dht, dF, layout.node_order(BT), *layout.meta, scale,
        HAS_DHT=dht is not None, **consts
    )
    dFl = chunk_fenwick_nodes_bwd(Gb, dF, layout, BT, q.dtype, S)

    dv = torch.empty_like(v)
    chunk_log_linear_attn_bwd_dv_kernel[(NT, NV, H)](
        q, k, do, g, level_scales, Gb, dFl, dht, dv, *layout.meta, scale, HAS_DHT=dht is not None, **consts,
        num_warps=_warps(BT, K, V, q.dtype),
    )
    R = H // G
    # Per value head; GQA groups (R > 1) are summed afterwards in float32, else stored in place.
    dqk_dtype = torch.float32 if R > 1 else q.dtype
    dq = torch.empty(B, T, H, K, dtype=dqk_dtype, device=q.device)
    dk = torch.empty(B, T, H, K, dtype=dqk_dtype, device=q.device)
    LP = max(2, triton.next_power_of_2(L))
    dlam = torch.empty(NK, B, T, H, L, dtype=torch.float32, device=q.device)
    dG = torch.empty(NK, B, T, H, dtype=torch.float32, device=q.device)
    chunk_log_linear_attn_bwd_dqk_kernel[(NT, NK, H)](
        q, k, v, do, g, level_scales, Fl, h0, Gb, dFl, dht, dq, dk, dlam, dG, *layout.meta, scale,
        NK=NK, NV=NV, LP=LP, BTOT=B * T, HAS_DHT=dht is not None, **consts,
        num_warps=_warps(BT, K, V, q.dtype),
    )
    dlam, dG = dlam.sum(0), dG.sum(0)
    if dht is not None:
        # The final state is exp(G_end) times terms in q, k, v, h0: its direct gate gradient
        # belongs to each sequence's last token.
        last = layout.seq_bos + layout.seq_len - 1
        dG.view(B * T, H)[last] += (dht * ht).sum((2, 3, 4))
    dg = _reverse_cumsum(dG.view(B * T, H), layout).view(B, T, H)

    dh0 = None
    if need_dh0:
        dh0 = torch.empty(N, H, L, K, V, dtype=torch.float32, device=q.device)
        chunk_log_linear_attn_bwd_dstate_kernel[(N * H, NV * NK, L)](
            q, do, g, level_scales, Gb, dht, dh0, *layout.meta[1:], scale, HAS_DHT=dht is not None, **consts
        )
    if R > 1:
        dq, dk = dq.view(B, T, G, R, K).sum(3).to(q.dtype), dk.view(B, T, G, R, K).sum(3).to(k.dtype)
    return dq, dk, dv, dg.to(g.dtype), dlam.to(level_scales.dtype), dh0


class ChunkLogLinearAttnFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, level_scales, h0, positions, output_final_state, cu_seqlens, scale, BT, S):
        B, T = q.shape[:2]
        q, k, v, g, level_scales = (x.contiguous() for x in (q, k, v, g, level_scales))
        h0 = None if h0 is None else h0.float().contiguous()
        layout = ChunkLayout(B, T, cu_seqlens, positions, BT, q.device)
        o, ht = chunk_log_linear_attn_fwd(q, k, v, g, level_scales, h0, output_final_state, layout, scale, BT, S)
        ctx.save_for_backward(q, k, v, g, level_scales, h0, ht)
        ctx.layout, ctx.scale, ctx.BT, ctx.S = layout, scale, BT, S
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, level_scales, h0, ht = ctx.saved_tensors
        need_dh0 = h0 is not None and ctx.needs_input_grad[5]
        dq, dk, dv, dg, dlam, dh0 = chunk_log_linear_attn_bwd(
            q, k, v, g, level_scales, h0, ht, do.contiguous(), None if dht is None else dht.contiguous(),
            ctx.layout, ctx.scale, ctx.BT, ctx.S, need_dh0,
        )
        return dq, dk, dv, dg, dlam, dh0, None, None, None, None, None, None


def chunk_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    _use_triton: bool = False,
    _chunk_size: int = CHUNK_SIZE,
    _scan_segment: int = SCAN_SEGMENT,
) -> tuple[torch.Tensor, FenwickState | None]:
    r"""Scalar-gated (Mamba-2 form) log-linear attention, chunked, with forward and backward.

    A drop-in replacement for ``fla.ops.log_linear_attn.chunk_log_linear_attn`` (same arguments in
    the same order) whose states are :class:`FenwickState`\ s and whose ``scale`` defaults to
    ``K ** -0.5`` (fla's op defaults to ``1.0``: pass ``scale=1.0`` to match it).

    ``o_t = scale * sum_{s <= t} lambda_t[min(level(t, s), L - 1)] * exp(G_t - G_s) * (q_t . k_s) v_s``
    with ``G`` the cumulative sum of ``g`` and levels from :mod:`fla_loglinear.levels` on absolute
    positions (a sequence continued from ``initial_state`` starts at ``positions[n]``).

    Args:
        q: ``[B, T, G, K]`` queries; value head ``h`` uses head ``h // (H // G)``.
        k: ``[B, T, G, K]`` keys.
        v: ``[B, T, H, V]`` values, ``H % G == 0``.
        g: ``[B, T, H]`` per-token log gates (``<= 0`` for a decay).
        level_scales: ``[B, T, H, L]`` lambdas, indexed by the query position; any ``L >= 1``
            (levels past ``L - 1`` use the last lambda).
        initial_state: :class:`FenwickState` with ``states [N, H, L, K, V]`` and ``positions [N]``;
            ``None`` starts every sequence empty at position 0.  Gradients flow into
            ``initial_state.states`` when it requires grad.
        output_final_state: also return the :class:`FenwickState` after the last token.
        cu_seqlens: ``[N + 1]`` packed sequence offsets (then ``B == 1``).
        scale: score scale; ``None`` means ``K ** -0.5``.

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in ``v.dtype``; ``final_state`` a float32
        :class:`FenwickState` ``[N, H, L, K, V]`` with ``positions + T_n``, or ``None``.

    CUDA tensors run the Triton kernels (float32 accumulation for any input dtype).  CPU tensors run
    ``naive_chunk_log_linear_attn`` unless the Triton interpreter is on (``TRITON_INTERPRET=1``)
    and the private ``_use_triton=True`` asks for the kernels (how the CPU tests cover them, with
    the private ``_chunk_size`` and ``_scan_segment``, in chunks, shrunk so that a few dozen tokens
    span several levels and scan segments).
    """
    if torch.compiler.is_compiling():  # one custom op in the graph (ops/library.py)
        from fla_loglinear.ops.library import compiled_chunk_log_linear_attn
        return compiled_chunk_log_linear_attn(q, k, v, g, level_scales, initial_state, output_final_state, cu_seqlens,
                                              scale, _use_triton, _chunk_size, _scan_segment)
    B, T, G, H, K, V, L, N = check_log_linear_attn_args(q, k, v, g, level_scales, initial_state, cu_seqlens)
    scale = K ** -0.5 if scale is None else float(scale)
    if not use_triton(q, _use_triton):
        return naive_chunk_log_linear_attn(
            q, k, v, g, level_scales, initial_state, output_final_state, cu_seqlens, scale, chunk_size=_chunk_size
        )
    # tl.dot needs every operand dimension >= 16: caught here, not as a compile error deep in a kernel
    for name, dim in (("q and k have head dim K", K), ("v has head dim V", V)):
        if dim < MIN_HEAD_DIM:
            raise ValueError(f"{name} = {dim}; the Triton kernels support head dims >= {MIN_HEAD_DIM}")
    h0 = positions = None
    if initial_state is not None:
        h0, positions = initial_state.without_empty_slots().states, initial_state.positions
    o, ht = ChunkLogLinearAttnFunction.apply(
        q, k, v, g, level_scales, h0, positions, output_final_state, cu_seqlens, scale, _chunk_size, _scan_segment
    )
    final_state = None
    if output_final_state:
        lens = torch.full((N,), T, device=q.device) if cu_seqlens is None else cu_seqlens.diff()
        start = torch.zeros(N, dtype=torch.int64, device=q.device) if positions is None else positions
        final_state = FenwickState(ht, start.to(torch.int64) + lens.to(torch.int64))
    return o, final_state
