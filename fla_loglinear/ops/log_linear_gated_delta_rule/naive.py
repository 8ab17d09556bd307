"""PyTorch references of the log-linear gated delta rule (Gated DeltaNet form).

Three forms of the same map, all taking already-preprocessed inputs (the public
op applies l2norm to q/k, sigmoid to beta and the gate options before calling them):

* :func:`naive_quadratic_log_linear_gated_delta_rule`: float64, every key's write carried
  token by token through the transitions and weighted by the full lambda mask; no state in,
  no Fenwick slots, so it checks the other two independently.
* :func:`naive_recurrent_log_linear_gated_delta_rule`: token recurrence over the ``L``
  Fenwick slots; this is the definition of decoding.
* :func:`naive_chunk_log_linear_gated_delta_rule`: ``O(T log T)`` chunked form over chunks
  aligned to absolute positions, with the WY (UT) representation of each chunk's transitions;
  the CPU path for training.

The token recurrence (all forms agree with it): at position ``p`` every slot goes through
``A_p = exp(g_p) (I - beta_p k_p k_p^T)``, then ``beta_p k_p v_p^T`` is written into slot 0,
then ``o_p = scale * sum_l lambda_p[l] q_p^T S_l``, then the state advances to ``p + 1`` by
merging the slots ``<= advance_level(p, p + 1)`` (transition and write first, merge last).
"""
from __future__ import annotations

import torch

from fla_loglinear.levels import bit_length, clamp_level, level_matrix, state_slot_weights
from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk_local import unit_lower_inverse
from fla_loglinear.state import FenwickState

__all__ = [
    "naive_quadratic_log_linear_gated_delta_rule",
    "naive_recurrent_log_linear_gated_delta_rule",
    "naive_chunk_log_linear_gated_delta_rule",
]


def _sequences(B: int, T: int, cu_seqlens: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """``(batch row, bos, eos)`` of every sequence, in the order of the state rows."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    offsets = cu_seqlens.tolist()
    return [(0, bos, eos) for bos, eos in zip(offsets[:-1], offsets[1:])]


def _start_positions(initial_state: FenwickState | None, N: int) -> list[int]:
    if initial_state is None:
        return [0] * N
    positions = initial_state.positions.tolist()
    if any(p < 0 for p in positions):
        raise ValueError(f"initial_state.positions must be >= 0, got {positions}")
    return positions


def _compute_dtype(v: torch.Tensor) -> torch.dtype:
    return torch.float64 if v.dtype == torch.float64 else torch.float32


def _pad_index(seqs, offsets, Tp: int, B: int, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index ``[N, Tp]`` into the flat tokens (``B * T`` points at an appended zero row)
    placing token ``i`` of sequence ``n`` at ``offsets[n] + i``, and its inverse ``[B * T]``."""
    index = torch.full((len(seqs), Tp), B * T, dtype=torch.int64)
    inverse = torch.empty(B * T, dtype=torch.int64)
    for n, ((b, bos, eos), off) in enumerate(zip(seqs, offsets)):
        flat = torch.arange(b * T + bos, b * T + eos)
        index[n, off:off + eos - bos] = flat
        inverse[flat] = n * Tp + off + torch.arange(eos - bos)
    return index.to(device), inverse.to(device)


def _pack(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, T, ...]`` -> ``[N, Tp, ...]``; padding tokens are zeros, so with ``g = beta = k = 0``
    their transition is the identity and their write is empty."""
    flat = x.reshape(-1, *x.shape[2:])
    flat = torch.cat([flat, flat.new_zeros(1, *flat.shape[1:])])
    return flat[index]


def _unpack(x: torch.Tensor, inverse: torch.Tensor, B: int, T: int) -> torch.Tensor:
    return x.reshape(-1, *x.shape[2:])[inverse].reshape(B, T, *x.shape[2:])


def _merge_slots(S: torch.Tensor, m: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empties the slots ``<= m`` (per state row ``m [N]``) of ``S`` (slots along ``dim``).

    Returns ``(kept, merged)``: ``S`` with those slots zeroed, and their sum placed in slot
    ``min(m, L - 1)`` (all other slots zero), so that the merged state is ``kept + merged``.
    """
    L = S.shape[dim]
    slots = torch.arange(L, device=S.device)
    shape = [S.shape[0]] + [1] * (S.ndim - 1)
    shape[dim] = L
    fold = (slots[None, :] <= m[:, None]).reshape(shape).to(S.dtype)
    target = (slots[None, :] == clamp_level(m, L)[:, None]).reshape(shape).to(S.dtype)
    return S * (1 - fold), target * (S * fold).sum(dim, keepdim=True)


def _slot_put(x: torch.Tensor, m: torch.Tensor, L: int) -> torch.Tensor:
    """``x [N, HV, K, V]`` placed in slot ``min(m, L - 1)`` of an ``[N, HV, K, L, V]`` state."""
    target = (torch.arange(L, device=x.device)[None, :] == clamp_level(m, L)[:, None]).to(x.dtype)
    return x[:, :, :, None, :] * target[:, None, None, :, None]


def naive_quadratic_log_linear_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    level_scales: torch.Tensor,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Quadratic float64 reference of the log-linear gated delta rule.

    ``o_t = scale * sum_{s<=t} lambda_t[level(t,s)] q_t^T (A_t ... A_{s+1}) beta_s k_s v_s^T``.

    Every key's write ``beta_s k_s`` is carried exactly through each later transition
    ``A_r = exp(g_r) (I - beta_r k_r k_r^T)``, giving the ``[T, T]`` matrix of
    ``q_t^T (A_t ... A_{s+1}) beta_s k_s``, which is then masked by the lambdas of the levels.
    No Fenwick slots are involved, so it checks the recurrent and chunked forms independently.
    Sequences start at position 0.

    Args:
        q, k: ``[B, T, H, K]`` (k already normalised).
        v: ``[B, T, HV, V]``, ``HV % H == 0``.
        g: ``[B, T, HV]`` log gates.
        beta: ``[B, T, HV]`` write strengths.
        level_scales: ``[B, T, HV, L]``.
        scale: defaults to ``K ** -0.5``.
        cu_seqlens: optional ``[N + 1]`` packed offsets (``B == 1``).
        output_final_state: also return the Fenwick state after each sequence (float64),
            computed from the carried writes by bucketing key ``s`` at level ``level(T_n, s)``.

    Returns:
        ``o [B, T, HV, V]`` in ``v.dtype`` and the final FenwickState (``N`` rows) or None.
    """
    B, T, H, HV, K, V, L, N = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, None, cu_seqlens)
    scale = K ** -0.5 if scale is None else scale
    f64, out_dtype = torch.float64, v.dtype
    q, k = (x.to(f64).repeat_interleave(HV // H, dim=2) for x in (q, k))
    v, g, beta, lam = (x.to(f64) for x in (v, g, beta, level_scales))
    outputs, states, positions = [], [], []
    for b, bos, eos in _sequences(B, T, cu_seqlens):
        qs, ks, vs, gs, bs, ls = (x[b, bos:eos].transpose(0, 1) for x in (q, k, v, g, beta, lam))
        Tn = eos - bos
        onehot = torch.eye(Tn, dtype=f64, device=q.device)
        # carried[h, s] = (A_t ... A_{s+1}) beta_s k_s after token t (zero for s > t)
        carried = ks.new_zeros(HV, Tn, K)
        rows = []
        for t in range(Tn):
            kt, bt, gt = ks[:, t], bs[:, t, None, None], gs[:, t, None, None]
            proj = (carried * kt[:, None, :]).sum(-1, keepdim=True)
            carried = gt.exp() * (carried - bt * proj * kt[:, None, :])
            carried = carried + onehot[t][None, :, None] * (bt * kt[:, None, :])
            rows.append((carried * qs[:, t, None, :]).sum(-1))
        attn = torch.stack(rows, dim=1)  # [HV, t, s]
        idx = torch.arange(Tn, device=q.device)
        lv = level_matrix(idx, idx)
        mask = ls.gather(-1, clamp_level(lv.clamp(min=0), L).expand(HV, Tn, Tn)) * (lv >= 0)
        outputs.append((scale * (attn * mask) @ vs).transpose(0, 1))
        if output_final_state:
            end = torch.full((1,), Tn, device=q.device)
            slot = clamp_level(level_matrix(end, idx)[0], L)
            buckets = torch.nn.functional.one_hot(slot, L).to(f64)  # [s, L]
            states.append(carried.transpose(1, 2)[:, None] @ (buckets.T[None, :, :, None] * vs[:, None]))
            positions.append(Tn)
    o = torch.stack(outputs) if cu_seqlens is None else torch.cat(outputs)[None]
    final = None
    if output_final_state:
        final = FenwickState(torch.stack(states), torch.tensor(positions, dtype=torch.int64, device=q.device))
    return o.to(out_dtype), final


def naive_recurrent_log_linear_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    level_scales: torch.Tensor,
    scale: float | None = None,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Token-by-token recurrence over the ``L`` Fenwick slots (defines decoding).

    Per token ``p``: every slot goes through ``A_p``, ``beta_p k_p v_p^T`` is added to slot 0,
    ``o_p = scale * sum_l lambda_p[l] q_p^T S_l``, then slots ``<= advance_level(p, p + 1)``
    merge into slot ``min(that level, L - 1)``.  Vectorised over sequences and heads; the
    Python loop runs over the tokens of the longest sequence only.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]``; g, beta: ``[B, T, HV]``;
        level_scales: ``[B, T, HV, L]``.
        scale: defaults to ``K ** -0.5``.
        initial_state: FenwickState, ``states [N, HV, L, K, V]``, ``positions [N]`` (the absolute
            position of each sequence's first token here); zeros at position 0 when None.
        output_final_state: return the state after the last token of each sequence.
        cu_seqlens: optional ``[N + 1]`` packed offsets (``B == 1``).

    Returns:
        ``o [B, T, HV, V]`` in ``v.dtype`` and the final FenwickState (float32, float64 for
        float64 inputs) or None.
    """
    B, T, H, HV, K, V, L, N = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, initial_state, cu_seqlens)
    scale = K ** -0.5 if scale is None else scale
    dtype, out_dtype = _compute_dtype(v), v.dtype
    seqs = _sequences(B, T, cu_seqlens)
    start = _start_positions(initial_state, N)
    lengths = [eos - bos for _, bos, eos in seqs]
    Tmax = max(lengths)
    index, inverse = _pad_index(seqs, [0] * N, Tmax, B, T, q.device)
    q, k = (_pack(x.to(dtype).repeat_interleave(HV // H, dim=2), index) for x in (q, k))
    v, g, beta, lam = (_pack(x.to(dtype), index) for x in (v, g, beta, level_scales))
    q = q * scale

    if initial_state is None:
        S = q.new_zeros(N, HV, L, K, V)
    else:
        S = initial_state.without_empty_slots().states.to(dtype)
    p0 = torch.tensor(start, dtype=torch.int64, device=q.device)
    length = torch.tensor(lengths, dtype=torch.int64, device=q.device)
    pos = p0[:, None] + torch.arange(Tmax, device=q.device)
    merge_level = bit_length(pos ^ (pos + 1))  # levels.advance_level(p, p + 1) of every token
    active = torch.arange(Tmax, device=q.device) < length[:, None]
    slot0 = (torch.arange(L, device=q.device) == 0).to(dtype)[:, None, None]
    outs = []
    for i in range(Tmax):
        qt, kt, vt, lt = q[:, i], k[:, i], v[:, i], lam[:, i]
        gt, bt = g[:, i, :, None, None, None], beta[:, i, :, None, None, None]
        proj = kt[:, :, None, None, :] @ S  # k^T S_l, [N, HV, L, 1, V]
        S_new = gt.exp() * (S - bt * kt[:, :, None, :, None] * proj)
        S_new = S_new + slot0 * (bt * kt[:, :, None, :, None] * vt[:, :, None, None, :])
        outs.append(((qt[:, :, None, None, :] @ S_new)[..., 0, :] * lt[..., None]).sum(2))
        kept, merged = _merge_slots(S_new, merge_level[:, i], dim=2)
        S = torch.where(active[:, i, None, None, None, None], kept + merged, S)
    o = _unpack(torch.stack(outs, dim=1), inverse, B, T).to(out_dtype)
    return o, FenwickState(S, p0 + length) if output_final_state else None


def naive_chunk_log_linear_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    level_scales: torch.Tensor,
    scale: float | None = None,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, FenwickState | None]:
    """Chunked ``O(T log T)`` form in pure PyTorch, differentiable by autograd.

    Chunks are aligned to absolute positions: a sequence starting at ``p0`` gets a first
    partial chunk ``[p0, ceil_C(p0))``.  Within a chunk with cumulative log gate ``gamma``
    (from the chunk's first token) the transitions have the WY form
    ``A_t ... A_a = exp(gamma_t) I - sum_{i<=t} exp(gamma_t - gamma_i) k_i w_i^T`` with
    ``W = (I + tril(diag(beta) K K^T * Gamma, -1))^{-1} diag(beta exp(gamma)) K``, and the
    same unit-triangular inverse gives the exact ``[C, C]`` matrix ``q_t^T (A_t ... A_{s+1})
    beta_s k_s`` of the keys inside the chunk, which is masked by the in-chunk lambdas.  The
    chunk-start Fenwick state (``L`` slots at once, ``[K, L * V]`` matmuls) is read by queries
    through their carried-back queries with ``levels.state_slot_weights`` and carried to the
    chunk end through the chunk's ``[K, K]`` transition.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]``; g, beta: ``[B, T, HV]``;
        level_scales: ``[B, T, HV, L]`` (any ``L >= 1``; levels past ``L - 1`` use the last).
        scale: defaults to ``K ** -0.5``.
        initial_state: FenwickState (``states [N, HV, L, K, V]``, ``positions [N]``); gradients
            flow into ``initial_state.states``.
        output_final_state: return the state after each sequence.
        cu_seqlens: optional ``[N + 1]`` packed offsets (``B == 1``).
        chunk_size: a power of two.

    Returns:
        ``o [B, T, HV, V]`` in ``v.dtype`` and the final FenwickState (float32, float64 for
        float64 inputs) or None.  Accumulates in float32 (float64 for float64 inputs).
    """
    B, T, H, HV, K, V, L, N = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, initial_state, cu_seqlens)
    C = chunk_size
    if not isinstance(C, int) or C < 1 or C & (C - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    scale = K ** -0.5 if scale is None else scale
    dtype, out_dtype, device = _compute_dtype(v), v.dtype, q.device
    seqs = _sequences(B, T, cu_seqlens)
    start = _start_positions(initial_state, N)
    lengths = [eos - bos for _, bos, eos in seqs]
    offsets = [p % C for p in start]
    NC = max(-(-(off + n) // C) for off, n in zip(offsets, lengths))
    index, inverse = _pad_index(seqs, offsets, NC * C, B, T, device)

    def chunked(x):  # [B, T, HV, ...] -> [N, HV, NC, C, ...]
        x = _pack(x, index)
        return x.reshape(N, NC, C, *x.shape[2:]).movedim(3, 1)

    q, k = (chunked(x.to(dtype).repeat_interleave(HV // H, dim=2)) for x in (q, k))
    v, lam = (chunked(x.to(dtype)) for x in (v, level_scales))
    g, beta = (chunked(x.to(dtype)[..., None])[..., 0] for x in (g, beta))
    q = q * scale

    # absolute positions of the padded tokens, chunk starts a (the sequence start for the first
    # chunk) and chunk ends e (the sequence end for the last one)
    p0 = torch.tensor(start, dtype=torch.int64, device=device)
    p1 = p0 + torch.tensor(lengths, dtype=torch.int64, device=device)
    base = p0 - torch.tensor(offsets, dtype=torch.int64, device=device)
    pos = base[:, None] + torch.arange(NC * C, device=device).reshape(1, NC * C)
    pos = pos.reshape(N, NC, C)
    a = torch.maximum(pos[..., 0], p0[:, None])
    e = torch.minimum(pos[..., -1] + 1, p1[:, None])
    live = e > a
    # levels.advance_level(a, e); chunks past a sequence end get 0, which with their identity
    # transitions and empty writes leaves the slots as they were
    merge_level = torch.where(live, bit_length(a ^ e), torch.zeros_like(a))  # [N, NC]
    last_chunk = [(off + n - 1) // C for off, n in zip(offsets, lengths)]
    ends_inside = [(off + n) % C != 0 for off, n in zip(offsets, lengths)]

    # ---- per-chunk quantities, all chunks at once --------------------------------------
    gamma = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float('-inf')).exp()
    kb = k * beta[..., None]
    tinv = unit_lower_inverse(((kb @ k.transpose(-1, -2)) * decay).tril(-1))
    qk = (q @ k.transpose(-1, -2)) * decay
    # aligned chunks: level(t, s) is the bit length of the xor of the in-chunk indices (levels.py)
    local = torch.arange(C, device=device)
    lv = level_matrix(local, local)
    in_mask = lam.gather(-1, clamp_level(lv.clamp(min=0), L).expand(*lam.shape[:-1], C)) * causal
    o = ((qk @ tinv) * beta[..., None, :] * in_mask) @ v

    eg = gamma.exp()
    w = tinv @ (kb * eg[..., None])
    q_back = eg[..., None] * q - qk @ w  # queries carried back to the chunk start
    k_end = k * (gamma[..., -1:] - gamma).exp()[..., None]  # keys carried to the chunk end
    transition = gamma[..., -1, None, None].exp() * torch.eye(K, dtype=dtype, device=device) \
        - k_end.transpose(-1, -2) @ w
    u = tinv @ (v * beta[..., None])
    k_new = k_end.transpose(-1, -2) @ u  # the chunk's writes carried to its end, [K, V]
    slot_w = state_slot_weights(lam, pos[:, None], a[:, None, :, None])  # [N, HV, NC, C, L]

    # ---- sequential pass over chunks: read, carry, merge and fill the L slots -----------
    # slots live as [N, HV, K, L, V] so that every slot is one [K, L * V] matmul
    if initial_state is None:
        S = q.new_zeros(N, HV, K, L, V)
    else:
        S = initial_state.without_empty_slots().states.to(dtype).transpose(2, 3)
    final = S.new_zeros(S.shape) if output_final_state else None
    inter = []
    for c in range(NC):
        flat = S.reshape(N, HV, K, L * V)
        read = (q_back[:, :, c] @ flat).reshape(N, HV, C, L, V)
        inter.append((read * slot_w[:, :, c, ..., None]).sum(-2))
        if c == NC - 1 and not output_final_state:
            break
        carried = (transition[:, :, c] @ flat).reshape(N, HV, K, L, V)
        kept, merged = _merge_slots(carried, merge_level[:, c], dim=3)
        ends = [n for n in range(N) if last_chunk[n] == c]
        if any(ends_inside[n] for n in ends):
            # a sequence ends inside this chunk: its keys fall into several buckets of the end
            s_pos = pos[:, c]
            s_slot = clamp_level(bit_length(s_pos ^ e[:, c, None]), L)
            s_slot = torch.where(s_pos < e[:, c, None], s_slot, torch.zeros_like(s_slot))
            buckets = torch.nn.functional.one_hot(s_slot, L).to(dtype)  # [N, C, L]
            d = k_end[:, :, c].transpose(-1, -2) @ tinv[:, :, c]  # [K, C]: keys carried to the end
            vb = v[:, :, c] * beta[:, :, c, :, None]
            writes = buckets.transpose(1, 2)[:, None, :, :, None] * vb[:, :, None]  # [N, HV, L, C, V]
            S = kept + merged + (d[:, :, None] @ writes).transpose(2, 3)
        else:
            S = kept + merged + _slot_put(k_new[:, :, c], merge_level[:, c], L)
        if output_final_state and ends:
            ended = torch.zeros(N, dtype=torch.bool, device=device)
            ended[ends] = True
            final = torch.where(ended[:, None, None, None, None], S, final)
    o = o + torch.stack(inter, dim=2)  # [N, HV, NC, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(N, NC * C, HV, V)
    o = _unpack(o, inverse, B, T).to(out_dtype)
    if not output_final_state:
        return o, None
    return o, FenwickState(final.transpose(2, 3).contiguous(), p1)
