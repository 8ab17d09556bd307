"""The chunk-local half of the chunked log-linear gated delta rule (PyTorch, differentiable).

Chunks have ``C = 64`` tokens and are aligned to absolute positions: a sequence starting
at ``p0`` gets a first partial chunk ``[p0, ceil_C(p0))``.  Tokens are scattered into a
zero-padded ``[NC, C]`` layout; a padded token has ``k = v = q = 0``, ``g = beta = 0``, so
its transition is the identity and it neither writes nor reads.

Per chunk (local cumulative log gate ``G``, ``gamma = G[-1]``) the WY form gives, with
``T = (I + tril(beta_i k_i.k_j e^{G_i - G_j}, -1))^{-1}``:

* ``W = T (beta e^G k)`` and ``U = T (beta v)``: a state ``S`` at the chunk start reaches the
  chunk end as ``e^gamma S - Kd^T (W S)`` with ``Kd = e^{gamma - G} k``, and the chunk's own
  keys arrive there as ``Kd^T U``;
* ``Qeff = scale (e^G q - M W)`` with ``M = tril(q k^T e^{G_i - G_j})``: query ``t`` reads a
  state slot ``S`` carried to ``t`` as ``Qeff_t . S``;
* ``Aeff = scale M T diag(beta)``: key ``s``'s contribution to query ``t`` inside the chunk,
  so the intra-chunk output is ``(Lambda * Aeff) V`` with the level mask ``Lambda``.

The sequential pass over chunks (all Fenwick slots) lives in :mod:`.chunk_inter`.  On CUDA the
same quantities come by default from the fused kernels of :mod:`.chunk_local_fused`; this module
stays the CPU path, the ``FLA_LOGLINEAR_GDN_LOCAL=torch`` fallback and the tests' reference.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fla_loglinear.levels import bit_length, level_matrix, state_slot_weights

__all__ = ["ChunkLayout", "make_layout", "to_chunks", "from_tokens", "chunk_local_fwd", "end_chunk_keys",
           "partial_end_keep"]


@dataclass
class ChunkLayout:
    C: int
    NC: int
    slot_idx: torch.Tensor  # [B*T] padded row of every token
    chunk_offsets: torch.Tensor  # [N + 1] int32, first chunk of each sequence
    pos_start: torch.Tensor  # [N] int64, absolute position of each sequence's first token
    pos_end: torch.Tensor  # [N] int64, position after its last token
    row_pos: torch.Tensor  # [NC, C] int64, absolute position of every padded row
    chunk_start: torch.Tensor  # [NC] int64, position of the state each chunk starts from
    # every start and length a multiple of C: padded rows are the tokens themselves (no copies)
    identity: bool = False
    # some sequence ends inside a chunk (its last chunk's keys spread over several slots)
    partial_end: bool = True


def make_layout(B: int, T: int, cu_seqlens, positions, device, C: int = 64) -> ChunkLayout:
    """Aligned chunk layout; ``positions`` is the per-sequence start (host ints or None).

    Needs the sequence lengths and the start positions on the host (``cu_seqlens`` is read once,
    like fla's prepare_chunk_indices for varlen inputs).  Built from one host-to-device copy with no
    stream synchronisation, and cached per (shape, offsets, starts, device): every layer of a model,
    and every training step of fixed shapes, reuses it.  Its tensors are shared, so read-only.
    """
    if isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = cu_seqlens.tolist()
    offs = None if cu_seqlens is None else tuple(int(x) for x in cu_seqlens)
    starts = None if positions is None else tuple(int(p) for p in positions)
    return _make_layout(B, T, offs, starts, torch.device(device), C)


@functools.lru_cache(maxsize=16)
def _make_layout(B: int, T: int, offs, starts, device: torch.device, C: int) -> ChunkLayout:
    if offs is None:
        bos, lens = [n * T for n in range(B)], [T] * B
    else:
        bos, lens = list(offs[:-1]), [b - a for a, b in zip(offs[:-1], offs[1:])]
    N = len(lens)
    p0 = [0] * N if starts is None else list(starts)
    nchunks = [(p + n - 1) // C - p // C + 1 for p, n in zip(p0, lens)]
    offsets = [0]
    for nc in nchunks:
        offsets.append(offsets[-1] + nc)
    NC = offsets[-1]
    shift = [offsets[n] * C + p0[n] % C - bos[n] for n in range(N)]
    # one pageable copy without a sync: the driver stages the host list before the call returns
    host = torch.tensor([*offsets, *p0, *lens, *nchunks, *shift], dtype=torch.int64)
    dev = host.to(device, non_blocking=True)
    offsets_d, start, lens_d, nchunks_d, shift_d = dev.split([N + 1, N, N, N, N])
    seqs = torch.arange(N, device=device)
    seq_of_token = torch.repeat_interleave(seqs, lens_d, output_size=B * T)
    seq_of_chunk = torch.repeat_interleave(seqs, nchunks_d, output_size=NC)
    chunk_base = ((start // C)[seq_of_chunk] + torch.arange(NC, device=device) - offsets_d[seq_of_chunk]) * C
    return ChunkLayout(
        C=C,
        NC=NC,
        slot_idx=torch.arange(B * T, device=device) + shift_d[seq_of_token],
        chunk_offsets=offsets_d.to(torch.int32),
        pos_start=start,
        pos_end=start + lens_d,
        row_pos=chunk_base[:, None] + torch.arange(C, device=device),
        chunk_start=torch.maximum(chunk_base, start[seq_of_chunk]),
        identity=all(p % C == 0 and n % C == 0 for p, n in zip(p0, lens)),
        partial_end=any((p + n) % C != 0 for p, n in zip(p0, lens)),
    )


def to_chunks(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """``[B, T, H, ...]`` -> ``[NC, H, C, ...]`` zero-padded, differentiable."""
    if layout.identity:
        return x.reshape(layout.NC, layout.C, *x.shape[2:]).transpose(1, 2)
    flat = x.reshape(-1, *x.shape[2:])
    out = flat.new_zeros(layout.NC * layout.C, *x.shape[2:]).index_copy(0, layout.slot_idx, flat)
    return out.reshape(layout.NC, layout.C, *x.shape[2:]).transpose(1, 2)


def from_tokens(x: torch.Tensor, layout: ChunkLayout, B: int, T: int) -> torch.Tensor:
    """Padded token rows ``[NC * C, H, ...]`` -> ``[B, T, H, ...]`` (no copy when aligned)."""
    if not layout.identity:
        x = x[layout.slot_idx]
    return x.reshape(B, T, *x.shape[1:])


def chunk_local_fwd(q, k, v, g, beta, level_scales, scale: float, layout: ChunkLayout, dtype: torch.dtype):
    """Everything that only needs one chunk; inputs ``[B, T, ...]`` with q/k already on the value heads.

    Returns ``(o_intra, qe, w, kd, u, gamma, omega, end_keys)``: ``[NC * C, HV, V]`` (padded token rows), three
    ``[NC, HV, C, K]``, ``[NC, HV, C, V]``, ``[NC, HV]``, ``omega [NC, HV, C, L]`` (the weight query
    ``t`` puts on slot ``l`` of the Fenwick state its chunk starts from) and ``end_keys``.

    A sequence that ends inside a chunk leaves that chunk's keys in several buckets of its end
    position, so they cannot enter the state as one ``Kd^T U`` block: ``u`` is zeroed for such a
    chunk and ``end_keys [N, HV, L, K, V]`` holds those keys per slot (zero for other sequences),
    to be added to the final state.
    """
    C = layout.C
    q, k, v, g, beta, lam = (to_chunks(x.to(dtype), layout) for x in (q, k, v, g, beta, level_scales))
    G = g.cumsum(-1)
    gamma = G[..., -1]
    idx = torch.arange(C, device=q.device)
    incl = idx[:, None] >= idx[None, :]
    strict = idx[:, None] > idx[None, :]
    # masked before exp: e^{G_i - G_j} above the diagonal can overflow
    decay = torch.where(incl, G[..., :, None] - G[..., None, :], float("-inf")).exp()
    kk = k @ k.transpose(-1, -2)
    eye = torch.eye(C, dtype=dtype, device=q.device)
    a = eye + torch.where(strict, beta[..., :, None] * kk * decay, 0.0)
    tinv = torch.linalg.solve_triangular(a, eye.expand_as(a), upper=False, unitriangular=True)
    w = tinv @ (beta[..., None] * G.exp()[..., None] * k)
    u = tinv @ (beta[..., None] * v)
    m = scale * (q @ k.transpose(-1, -2)) * decay
    qe = scale * G.exp()[..., None] * q - m @ w
    aeff = (m @ tinv) * beta[..., None, :]
    L = lam.shape[-1]
    lvl = level_matrix(idx, idx).clamp(min=0, max=L - 1)
    lam_mask = torch.where(incl, lam.gather(-1, lvl.expand(*lam.shape[:-1], C)), 0.0)
    o_intra = ((lam_mask * aeff) @ v).transpose(1, 2).reshape(layout.NC * C, *v.shape[1:2], v.shape[-1])
    kd = (gamma[..., None] - G).exp()[..., None] * k
    t = layout.row_pos[:, None, :].expand(lam.shape[:-1])
    start = layout.chunk_start[:, None, None].expand(lam.shape[:-1])
    omega = state_slot_weights(lam, t, start)
    u, end_keys = _split_end_chunks(u, kd, tinv, beta[..., None] * v, L, layout)
    return o_intra, qe, w, kd, u, gamma, omega, end_keys


def _split_end_chunks(u, kd, tinv, bv, L: int, layout: ChunkLayout):
    C = layout.C
    last = (layout.chunk_offsets[1:] - 1).long()
    inside = (layout.pos_end % C != 0).to(u.dtype)  # [N]
    keep = torch.ones(layout.NC, dtype=u.dtype, device=u.device).index_put((last,), 1 - inside)
    u = u * keep[:, None, None, None]
    carry = kd[last].transpose(-1, -2) @ tinv[last]  # [N, HV, K, C]: write of row s carried to the end
    return u, _end_keys(carry, bv[last], inside, L, layout)


def _end_keys(carry, bv, inside, L: int, layout: ChunkLayout):
    # key s goes to slot min(level(end, s), L - 1); padded rows carry no key
    last = (layout.chunk_offsets[1:] - 1).long()
    rows = layout.row_pos[last]  # [N, C]
    slot = bit_length(rows ^ layout.pos_end[:, None]).clamp(max=L - 1)
    onehot = torch.nn.functional.one_hot(slot, L).to(bv.dtype) * inside[:, None, None]  # [N, C, L]
    return torch.einsum("nhkc,nhcv,ncl->nhlkv", carry, bv, onehot)


def end_chunk_keys(k, v, g, beta, L: int, layout: ChunkLayout, dtype: torch.dtype):
    """``(end_keys, keep)`` of the last chunks from padded token rows ``[NC * C, HV, ...]``.

    For the fused path, whose WY inverse is not differentiable by autograd: the (at most N)
    last chunks are redone here in PyTorch.  ``keep [NC]`` zeroes ``u`` of the chunks whose
    sequence ends inside them; both are ``None`` when no sequence does.
    """
    if not layout.partial_end:
        return None, None
    C, NC = layout.C, layout.NC
    last = (layout.chunk_offsets[1:] - 1).long()

    def chunk_rows(x):
        x = x.reshape(NC, C, *x.shape[1:])[last].to(dtype)
        return x.transpose(1, 2)  # [N, HV, C, ...]

    kl, vl, gl, bl = (chunk_rows(x) for x in (k, v, g, beta))
    G = gl.cumsum(-1)
    idx = torch.arange(C, device=k.device)
    strict = idx[:, None] > idx[None, :]
    decay = torch.where(strict, G[..., :, None] - G[..., None, :], float("-inf")).exp()
    eye = torch.eye(C, dtype=dtype, device=k.device)
    a = eye + bl[..., :, None] * (kl @ kl.transpose(-1, -2)) * decay
    tinv = torch.linalg.solve_triangular(a, eye.expand_as(a), upper=False, unitriangular=True)
    kd = (G[..., -1:] - G).exp()[..., None] * kl
    inside = (layout.pos_end % C != 0).to(dtype)
    carry = kd.transpose(-1, -2) @ tinv
    return _end_keys(carry, bl[..., None] * vl, inside, L, layout), partial_end_keep(layout, dtype)


def partial_end_keep(layout: ChunkLayout, dtype: torch.dtype) -> torch.Tensor | None:
    """``keep [NC]``: 0 for the chunks whose sequence ends inside them (their keys go to the final
    state through ``end_keys``), 1 elsewhere; ``None`` when no sequence ends inside a chunk."""
    if not layout.partial_end:
        return None
    last = (layout.chunk_offsets[1:] - 1).long()
    inside = (layout.pos_end % layout.C != 0).to(dtype)
    return torch.ones(layout.NC, dtype=dtype, device=inside.device).index_put((last,), 1 - inside)
