"""Pure PyTorch forms of scalar-gated (Mamba-2 form) log-linear attention.

Three forms of one definition (see :mod:`fla_loglinear.levels` for the level rule):

* :func:`naive_quadratic_log_linear_attn`: the materialised ``T x T`` hierarchical mask in
  float64, the reference of the other two.
* :func:`naive_recurrent_log_linear_attn`: token by token over the ``L`` Fenwick slots; it
  defines decoding and is the CPU path of the decode op.
* :func:`naive_chunk_log_linear_attn`: ``O(T log T)`` chunked form with chunks aligned to
  absolute positions, differentiable by autograd; the CPU path of the chunk op.

Outputs are ``o = scale * sum_{s <= t} lambda_t[min(level(t, s), L - 1)] exp(G_t - G_s) (q_t . k_s) v_s``
with ``G`` the running sum of the log gates ``g`` and value head ``h`` reading q/k head
``h // (H // G)``.  Final states are float32, float64 when the inputs are float64 (so that the
float64 references can be chained without losing precision).

The arguments the three forms share mean the same in each:

* ``q``, ``k``: ``[B, T, G, K]`` queries and keys.
* ``v``: ``[B, T, H, V]`` values, ``H % G == 0``.
* ``g``: ``[B, T, H]`` per-token log gates.
* ``level_scales``: ``[B, T, H, L]`` lambdas, indexed by the query position.
* ``initial_state``: :class:`FenwickState` with ``states [N, H, L, K, V]``, ``positions [N]``;
  sequence ``n`` continues from position ``positions[n]``.  ``None``: empty at 0.
* ``output_final_state``: also return the state after the last token.
* ``cu_seqlens``: ``[N + 1]`` packed sequence offsets (``B == 1``).
* ``scale``: score scale; ``None`` means ``K ** -0.5``.

and the recurrent and chunked forms return ``(o, final_state)``: ``o`` ``[B, T, H, V]`` in
``v.dtype``; ``final_state`` a :class:`FenwickState` ``[N, H, L, K, V]`` or ``None``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fla_loglinear.levels import bit_length, clamp_level, level_matrix, state_slot_weights
from fla_loglinear.ops.log_linear_attn.args import check_log_linear_attn_args
from fla_loglinear.state import FenwickState

__all__ = [
    "naive_quadratic_log_linear_attn",
    "naive_recurrent_log_linear_attn",
    "naive_chunk_log_linear_attn",
]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _seq_lengths(B: int, T: int, cu_seqlens: torch.Tensor | None) -> list[int]:
    if cu_seqlens is None:
        return [T] * B
    offsets = cu_seqlens.tolist()
    return [e - s for s, e in zip(offsets[:-1], offsets[1:])]


def _start_positions(initial_state: FenwickState | None, N: int) -> list[int]:
    return [0] * N if initial_state is None else [int(p) for p in initial_state.positions.tolist()]


def _token_index(lengths: list[int], offsets: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, padded index) of every token of the flattened ``[B * T]`` / packed ``[T]`` input."""
    lens = torch.tensor(lengths, device=device)
    seq = torch.repeat_interleave(torch.arange(len(lengths), device=device), lens)
    starts = torch.cumsum(lens, 0) - lens
    local = torch.arange(seq.numel(), device=device) - starts[seq]
    return seq, local + torch.tensor(offsets, device=device)[seq]


def _pad(x: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor], N: int, Tp: int) -> torch.Tensor:
    """``[B, T, ...] -> [N, Tp, ...]``; the gaps are zeros, i.e. tokens with k = v = g = 0 that change nothing."""
    flat = x.reshape(-1, *x.shape[2:])
    return flat.new_zeros(N, Tp, *x.shape[2:]).index_put(index, flat)


def _merge_matrix(m: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    """``[..., L_old, L_new]`` 0/1 map moving slot ``l`` to ``max(l, m)`` (``m`` already clamped; ``-1`` keeps all)."""
    slots = torch.arange(L, device=m.device)
    return F.one_hot(torch.maximum(slots, m.unsqueeze(-1)), L).to(dtype)


def naive_quadratic_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, None]:
    """Scalar-gated log-linear attention with the materialised hierarchical mask, in float64.

    Arguments as in the module docstring; every sequence starts at position 0 (there is no
    state).  Returns ``(o, None)`` with ``o`` ``[B, T, H, V]`` in ``v.dtype``.
    """
    B, T, G, H, K, V, L, N = check_log_linear_attn_args(q, k, v, g, level_scales, None, cu_seqlens)
    scale = K ** -0.5 if scale is None else scale
    R = H // G
    f64 = torch.float64
    q, k = (x.to(f64).repeat_interleave(R, dim=2) for x in (q, k))
    vv, g, lam = v.to(f64), g.to(f64), level_scales.to(f64)

    if cu_seqlens is None:
        segments = [(b, 0, T) for b in range(B)]
    else:
        offsets = cu_seqlens.tolist()
        segments = [(0, s, e) for s, e in zip(offsets[:-1], offsets[1:])]
    outs = []
    for b, s, e in segments:
        pos = torch.arange(e - s, device=q.device)
        lv = level_matrix(pos, pos)
        causal = lv >= 0
        idx = clamp_level(lv.clamp(min=0), L).expand(H, -1, -1)
        W = lam[b, s:e].transpose(0, 1).gather(-1, idx)
        Gc = g[b, s:e].cumsum(0).transpose(0, 1)
        D = (Gc[:, :, None] - Gc[:, None, :]).masked_fill(~causal, float("-inf")).exp()
        A = torch.einsum("thk,shk->hts", q[b, s:e], k[b, s:e])
        outs.append(torch.einsum("hts,shv->thv", A * W * D, vv[b, s:e]))
    o = torch.stack(outs, 0) if cu_seqlens is None else torch.cat(outs, 0).unsqueeze(0)
    return (o * scale).to(v.dtype), None


def naive_recurrent_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Token-by-token scalar-gated log-linear attention over the ``L`` Fenwick slots.

    Per token ``p`` (the sequence's absolute position): every slot decays by ``exp(g_p)``,
    ``k_p v_p^T`` is added to slot 0, ``o_p = scale * sum_l lambda_p[l] q_p^T S_l``, then the
    state moves to ``p + 1``: slots ``<= m`` merge into slot ``min(m, L - 1)`` with
    ``m = advance_level(p, p + 1)``.  Vectorised over sequences and heads; loops over tokens.

    Arguments and result as in the module docstring.
    """
    B, T, G, H, K, V, L, N = check_log_linear_attn_args(q, k, v, g, level_scales, initial_state, cu_seqlens)
    scale = K ** -0.5 if scale is None else scale
    dt, device, R = _acc_dtype(q), q.device, H // G
    lengths = _seq_lengths(B, T, cu_seqlens)
    Tm = max(lengths)
    index = _token_index(lengths, [0] * N, device)
    qp, kp = (_pad(x.to(dt).repeat_interleave(R, dim=2), index, N, Tm) for x in (q, k))
    vp, gp, lp = (_pad(x.to(dt), index, N, Tm) for x in (v, g, level_scales))

    p0 = torch.tensor(_start_positions(initial_state, N), device=device)
    steps = torch.arange(Tm, device=device)
    pos = p0[:, None] + steps
    # levels.advance_level(p, p + 1) for every token at once; -1 (no merge) past a sequence's end.
    m = clamp_level(bit_length(pos ^ (pos + 1)), L)
    m = torch.where(steps < torch.tensor(lengths, device=device)[:, None], m, torch.full_like(m, -1))
    merge = _merge_matrix(m, L, dt)
    slot0 = F.one_hot(torch.tensor(0, device=device), L).to(dt)[:, None, None]

    if initial_state is None:
        S = q.new_zeros(N, H, L, K, V, dtype=dt)
    else:
        S = initial_state.without_empty_slots().states.to(dt)
    outs = []
    for i in range(Tm):
        S = S * gp[:, i].exp()[:, :, None, None, None]
        S = S + slot0 * (kp[:, i, :, :, None] * vp[:, i, :, None, :])[:, :, None]
        outs.append(torch.einsum("nhk,nhl,nhlkv->nhv", qp[:, i], lp[:, i], S))
        S = torch.einsum("nol,nhokv->nhlkv", merge[:, i], S)
    o = torch.stack(outs, 1)[index].reshape(B, T, H, V)

    final_state = None
    if output_final_state:
        final_state = FenwickState(S, p0 + torch.tensor(lengths, device=device))
    return (o * scale).to(v.dtype), final_state


def naive_chunk_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Chunked ``O(T log T)`` scalar-gated log-linear attention in pure PyTorch (autograd backward).

    Chunks of ``chunk_size`` tokens are aligned to absolute positions, so a sequence starting
    at ``p0`` gets a first partial chunk and, inside a chunk, levels are those of the local
    indices.  Keys before the chunk come from the Fenwick state at the chunk start, which is
    carried from chunk to chunk (merge slots ``<= advance_level(a, b)``, add the chunk's keys).
    Vectorised over sequences, heads and chunks except that one carry; accumulates in float32
    (float64 for float64 inputs).

    Arguments and result as in the module docstring, plus ``chunk_size``, a power of two.
    """
    B, T, G, H, K, V, L, N = check_log_linear_attn_args(q, k, v, g, level_scales, initial_state, cu_seqlens)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a positive power of two, got {chunk_size!r}")
    scale = K ** -0.5 if scale is None else scale
    C, R, dt, device = chunk_size, H // G, _acc_dtype(q), q.device

    lengths = _seq_lengths(B, T, cu_seqlens)
    starts = _start_positions(initial_state, N)
    offsets = [p % C for p in starts]
    NC = max(-(-(o + n) // C) for o, n in zip(offsets, lengths))
    index = _token_index(lengths, offsets, device)

    def chunked(x: torch.Tensor, per_value_head: bool) -> torch.Tensor:
        # [B, T, heads, *rest] -> [N, G, (R,) NC, C, *rest]: the padded grid sits on absolute positions.
        xp = _pad(x.to(dt), index, N, NC * C)
        if per_value_head:
            return xp.view(N, NC, C, G, R, *x.shape[3:]).movedim((3, 4), (1, 2))
        return xp.view(N, NC, C, G, *x.shape[3:]).movedim(3, 1)

    qc, kc = (chunked(x, False) for x in (q, k))                      # [N, G, NC, C, K]
    vc, gc, lc = (chunked(x, True) for x in (v, g, level_scales))     # [N, G, R, NC, C, (V | L)]
    Gc = gc.cumsum(-1)

    # Keys inside the chunk: levels.level of the local indices (the chunk is aligned).
    local = torch.arange(C, device=device)
    causal = local[:, None] >= local[None, :]
    lvl = clamp_level(bit_length(local[:, None] ^ local[None, :]), L)
    W = lc.gather(-1, lvl.expand(N, G, R, NC, C, C))
    D = (Gc[..., :, None] - Gc[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    A = (qc @ kc.transpose(-1, -2)).unsqueeze(2)
    o = (A * W * D) @ vc

    # Chunk summaries: the chunk's keys carried to its end, and its total decay.
    vd = vc * (Gc[..., -1:] - Gc).exp().unsqueeze(-1)
    KV = torch.einsum("ngcsk,ngrcsv->ngrckv", kc, vd)
    decay = Gc[..., -1].exp()

    # Chunk c of sequence n covers [a, b); a is the sequence start for its first chunk.
    p0 = torch.tensor(starts, device=device)
    chunk_start = (p0 - torch.tensor(offsets, device=device))[:, None] + torch.arange(NC, device=device) * C
    a = torch.cat([p0[:, None], chunk_start[:, 1:]], 1)
    m = clamp_level(bit_length(a ^ (chunk_start + C)), L)  # levels.advance_level(a, b)
    merge = _merge_matrix(m, L, dt)
    land = F.one_hot(m, L).to(dt)

    if initial_state is None:
        S = q.new_zeros(N, G, R, L, K, V, dtype=dt)
    else:
        S = initial_state.without_empty_slots().states.to(dt).reshape(N, G, R, L, K, V)
    states = []
    for c in range(NC):
        states.append(S)
        S = decay[..., c, None, None, None] * torch.einsum("nol,ngrokv->ngrlkv", merge[:, c], S)
        S = S + land[:, c, None, None, :, None, None] * KV[:, :, :, c, None]
    states = torch.stack(states, 3)                                    # [N, G, R, NC, L, K, V]

    # Keys before the chunk: query t weights slot l of the state at a by
    # lambda_t[min(max(l, bit_length(t ^ a)), L - 1)], after decaying it through [a, t].
    t_abs = chunk_start[..., None] + local
    w = state_slot_weights(lc, t_abs[:, None, None], a[:, None, None, :, None]) * Gc.exp().unsqueeze(-1)
    qS = qc.unsqueeze(2) @ states.movedim(4, 5).reshape(N, G, R, NC, K, L * V)
    o = o + (w.unsqueeze(-2) @ qS.view(N, G, R, NC, C, L, V)).squeeze(-2)
    o = o.movedim((1, 2), (3, 4)).reshape(N, NC * C, H, V)[index].reshape(B, T, H, V)

    final_state = None
    if output_final_state:
        final_state = _final_state(kc, vd, decay, states, a, chunk_start, p0, offsets, lengths, C, L)
    return (o * scale).to(v.dtype), final_state


def _final_state(kc, vd, decay, states, a, chunk_start, p0, offsets, lengths, C, L) -> FenwickState:
    """The state at each sequence's end ``p_end``, built from the state at the start of its last chunk.

    ``p_end`` need not be a chunk boundary, so the chunk's keys fall in several buckets of
    ``p_end``: each key ``s`` lands in slot ``min(bit_length(p_end ^ s), L - 1)`` and slot ``l`` of
    the state at ``a`` moves to ``min(max(l, bit_length(p_end ^ a)), L - 1)``.  The padding after
    ``p_end`` has g = 0 and k = 0, so the chunk-end decays are the decays to ``p_end``.
    """
    device = kc.device
    N, G, R = states.shape[:3]
    n = torch.arange(N, device=device)
    lens = torch.tensor(lengths, device=device)
    p_end = p0 + lens
    last = (torch.tensor(offsets, device=device) + lens - 1) // C
    moved = _merge_matrix(clamp_level(bit_length(a[n, last] ^ p_end), L), L, states.dtype)
    S = torch.einsum("nol,ngrokv->ngrlkv", moved, states[n, :, :, last]) * decay[n, :, :, last][..., None, None, None]
    keys = chunk_start[n, last][:, None] + torch.arange(C, device=device)
    slot = F.one_hot(clamp_level(bit_length(keys ^ p_end[:, None]), L), L).to(states.dtype)
    S = S + torch.einsum("ngsk,nsl,ngrsv->ngrlkv", kc[n, :, last], slot, vd[n, :, :, last])
    K, V = S.shape[-2:]
    return FenwickState(S.reshape(N, G * R, L, K, V), p_end)
