"""The chunk-local half of the chunked log-linear gated delta rule (PyTorch, differentiable).

Chunks are those of :mod:`.layout` (aligned to absolute positions, padded).  Per chunk (local cumulative log gate ``G``, ``gamma = G[-1]``) the WY form gives, with
``T = (I + tril(beta_i k_i.k_j e^{G_i - G_j}, -1))^{-1}``:

* ``W = T (beta e^G k)`` and ``U = T (beta v)``: a state ``S`` at the chunk start reaches the
  chunk end as ``e^gamma S - Kd^T (W S)`` with ``Kd = e^{gamma - G} k``, and the chunk's own
  keys arrive there as ``Kd^T U``;
* ``Qeff = scale (e^G q - M W)`` with ``M = tril(q k^T e^{G_i - G_j})``: query ``t`` reads a
  state slot ``S`` carried to ``t`` as ``Qeff_t . S``;
* ``Aeff = scale M T diag(beta)``: key ``s``'s contribution to query ``t`` inside the chunk,
  so the intra-chunk output is ``(Lambda * Aeff) V`` with the level mask ``Lambda``.

The sequential pass over chunks (all Fenwick slots) lives in :mod:`.chunk_inter_fwd`.  On CUDA the
same quantities come by default from the fused kernels of :mod:`.chunk_local_fused`; this module
stays the path of head dims below 32 (and ``GDNLaunchPlan.local="torch"``) and the tests' reference.
"""
from __future__ import annotations

import torch

from fla_loglinear.levels import bit_length, level_matrix, state_slot_weights
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import PaddedChunkLayout, to_chunks

__all__ = ["chunk_local_fwd", "end_chunk_keys", "partial_end_keep", "unit_lower_inverse"]


def unit_lower_inverse(strict_lower: torch.Tensor) -> torch.Tensor:
    """``(I + strict_lower)^{-1}`` of ``[..., C, C]`` blocks, the WY form's ``T``."""
    eye = torch.eye(strict_lower.shape[-1], dtype=strict_lower.dtype, device=strict_lower.device)
    return torch.linalg.solve_triangular(eye + strict_lower, eye.expand_as(strict_lower), upper=False,
                                         unitriangular=True)


def chunk_local_fwd(q, k, v, g, beta, level_scales, scale: float, layout: PaddedChunkLayout, dtype: torch.dtype):
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
    tinv = unit_lower_inverse(torch.where(strict, beta[..., :, None] * kk * decay, 0.0))
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


def _split_end_chunks(u, kd, tinv, bv, L: int, layout: PaddedChunkLayout):
    C = layout.C
    last = (layout.chunk_offsets[1:] - 1).long()
    inside = (layout.pos_end % C != 0).to(u.dtype)  # [N]
    keep = torch.ones(layout.NC, dtype=u.dtype, device=u.device).index_put((last,), 1 - inside)
    u = u * keep[:, None, None, None]
    carry = kd[last].transpose(-1, -2) @ tinv[last]  # [N, HV, K, C]: write of row s carried to the end
    return u, _end_keys(carry, bv[last], inside, L, layout)


def _end_keys(carry, bv, inside, L: int, layout: PaddedChunkLayout):
    # key s goes to slot min(level(end, s), L - 1); padded rows carry no key
    last = (layout.chunk_offsets[1:] - 1).long()
    rows = layout.row_pos[last]  # [N, C]
    slot = bit_length(rows ^ layout.pos_end[:, None]).clamp(max=L - 1)
    onehot = torch.nn.functional.one_hot(slot, L).to(bv.dtype) * inside[:, None, None]  # [N, C, L]
    return torch.einsum("nhkc,nhcv,ncl->nhlkv", carry, bv, onehot)


def end_chunk_keys(k, v, g, beta, L: int, layout: PaddedChunkLayout, dtype: torch.dtype):
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
    tinv = unit_lower_inverse(bl[..., :, None] * (kl @ kl.transpose(-1, -2)) * decay)
    kd = (G[..., -1:] - G).exp()[..., None] * kl
    inside = (layout.pos_end % C != 0).to(dtype)
    carry = kd.transpose(-1, -2) @ tinv
    return _end_keys(carry, bl[..., None] * vl, inside, L, layout), partial_end_keep(layout, dtype)


def partial_end_keep(layout: PaddedChunkLayout, dtype: torch.dtype) -> torch.Tensor | None:
    """``keep [NC]``: 0 for the chunks whose sequence ends inside them (their keys go to the final
    state through ``end_keys``), 1 elsewhere; ``None`` when no sequence ends inside a chunk."""
    if not layout.partial_end:
        return None
    last = (layout.chunk_offsets[1:] - 1).long()
    inside = (layout.pos_end % layout.C != 0).to(dtype)
    return torch.ones(layout.NC, dtype=dtype, device=inside.device).index_put((last,), 1 - inside)
