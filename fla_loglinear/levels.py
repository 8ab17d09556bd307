"""Fenwick level math: the one place that decides which bucket a key falls in.

Positions are absolute, 0-based positions inside one sequence.  For a query at
``t`` and a key at ``s <= t`` the level is ``0`` when ``s == t`` and otherwise
``(t ^ s).bit_length()``.  Level ``l >= 1`` of query ``t`` holds the
``2 ** (l - 1)`` keys ``[(t >> l) << l, ((t >> l) << l) + 2 ** (l - 1))`` and
is non-empty only when bit ``l - 1`` of ``t`` is set.

``level_scales`` (lambda) carries ``L`` levels.  Level ``l`` is weighted by
``lambda[min(l, L - 1)]``: the last lambda covers every coarser bucket, so a
sequence longer than ``2 ** (L - 1)`` tokens is never truncated.  States keep
one slot per lambda (slot ``min(l, L - 1)``), which is what makes the state
size ``O(L)`` however long the sequence grows.

A Fenwick *state* at position ``p`` summarises the keys ``[0, p)`` bucketed
relative to the *next* query ``p`` (so slot 0 is empty at rest when L > 1).
Moving it from ``a`` to ``b > a`` when every key of ``[a, b)`` lies in one
bucket of ``b`` (one token, or ``b`` a chunk boundary and ``a`` inside that
chunk) is :func:`advance_level`: every slot ``<= m`` merges into slot ``m``
with ``m = (a ^ b).bit_length()``, and the new keys land in slot ``m`` too.
A slot that no key of ``[0, p)`` falls in is *empty* (:func:`occupied_slots`); every op
ignores what an empty slot holds, so decoding reads only the ``O(popcount(p))`` occupied ones.
The same rule gives the weight a query ``t >= a`` puts on a slot ``l`` of the
state at ``a``: ``lambda_t[min(max(l, (t ^ a).bit_length()), L - 1)]``.
"""
from __future__ import annotations

import torch

__all__ = [
    "level",
    "num_levels",
    "clamp_level",
    "buckets",
    "advance_level",
    "level_matrix",
    "bit_length",
    "state_slot_weights",
    "occupied_slots",
    "slot_written_at",
]


def level(t: int, s: int) -> int:
    """Fenwick level of key ``s`` for query ``t`` (``0 <= s <= t``)."""
    if s > t or s < 0:
        raise ValueError(f"level needs 0 <= s <= t, got t={t}, s={s}")
    return (t ^ s).bit_length()


def num_levels(T: int) -> int:
    """Levels a sequence of ``T`` tokens needs: ``ceil(log2 T) + 1`` (1 for ``T = 1``)."""
    if T < 1:
        raise ValueError(f"num_levels needs T >= 1, got {T}")
    return (T - 1).bit_length() + 1


def clamp_level(lvl, L: int):
    """The lambda index of level ``lvl`` when ``L`` lambdas are given (ints or tensors)."""
    if L < 1:
        raise ValueError(f"the number of levels L must be >= 1, got {L}")
    if isinstance(lvl, torch.Tensor):
        return lvl.clamp(max=L - 1)
    return min(lvl, L - 1)


def buckets(t: int) -> list[tuple[int, int, int]]:
    """The non-empty buckets of query ``t`` as ``(level, start, stop)``, finest first."""
    if t < 0:
        raise ValueError(f"buckets needs t >= 0, got {t}")
    out = [(0, t, t + 1)]
    for lvl in range(1, t.bit_length() + 1):
        if (t >> (lvl - 1)) & 1:
            start = (t >> lvl) << lvl
            out.append((lvl, start, start + (1 << (lvl - 1))))
    return out


def advance_level(a: int, b: int) -> int:
    """Slot that merges slots ``<= m`` and takes the keys ``[a, b)`` when a state moves from ``a`` to ``b``."""
    if not 0 <= a < b:
        raise ValueError(f"advance_level needs 0 <= a < b, got a={a}, b={b}")
    return (a ^ b).bit_length()


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Elementwise ``int.bit_length`` of a non-negative integer tensor."""
    x = torch.as_tensor(x).to(torch.int64)
    # frexp's exponent is the bit length (x = m * 2**e, 0.5 <= m < 1); halves of 32 bits keep
    # the int -> float64 conversion exact, so no loop over bits and no host sync.
    hi, lo = x >> 32, x & 0xFFFFFFFF
    e_hi = torch.frexp(hi.to(torch.float64))[1].to(torch.int64)
    e_lo = torch.frexp(lo.to(torch.float64))[1].to(torch.int64)
    return torch.where(hi > 0, 32 + e_hi, torch.where(lo > 0, e_lo, torch.zeros_like(x)))


def level_matrix(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Levels for every (query, key) pair: ``[len(t), len(s)]``; entries with ``s > t`` are -1."""
    t = t.to(torch.int64)[:, None]
    s = s.to(torch.int64)[None, :]
    lv = bit_length(t ^ s)
    return torch.where(s <= t, lv, torch.full_like(lv, -1))


def state_slot_weights(level_scales: torch.Tensor, t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Weights that queries at ``t`` put on the slots of a Fenwick state taken at ``a <= t``.

    ``level_scales``: ``[..., L]`` lambdas of those queries; ``t`` and ``a`` broadcast to
    ``level_scales.shape[:-1]``.  Returns ``[..., L]`` with entry ``l`` equal to
    ``lambda[min(max(l, bit_length(t ^ a)), L - 1)]``.
    """
    L = level_scales.shape[-1]
    m = bit_length(torch.as_tensor(t) ^ torch.as_tensor(a)).to(level_scales.device)
    slots = torch.arange(L, device=level_scales.device)
    idx = torch.maximum(slots, m.unsqueeze(-1)).clamp(max=L - 1)
    idx = idx.expand(level_scales.shape)
    return level_scales.gather(-1, idx)


def occupied_slots(positions: torch.Tensor, L: int) -> torch.Tensor:
    """``[..., L]`` bool: which slots of a Fenwick state at ``positions`` hold keys of ``[0, p)``.

    Slot ``l`` in ``1 .. L - 2`` holds level ``l``, which is non-empty when bit ``l - 1`` of ``p``
    is set; the last slot ``L - 1`` holds every level ``>= L - 1``, non-empty once
    ``p >= 2 ** (L - 2)``; slot 0 (level 0, the query itself) is empty at rest unless ``L == 1``,
    where it holds everything.  Computed on the device (no host sync).
    """
    if L < 1:
        raise ValueError(f"the number of levels L must be >= 1, got {L}")
    p = torch.as_tensor(positions).to(torch.int64).unsqueeze(-1)
    slots = torch.arange(L, device=p.device)
    shift = (slots - 1).clamp(min=0)
    inner = (slots > 0) & (((p >> shift) & 1) == 1)
    last = p >= (1 << shift)
    return torch.where(slots == L - 1, last, inner)


def slot_written_at(positions: torch.Tensor, L: int) -> torch.Tensor:
    """``[..., L]`` int64: the position at which each slot of a Fenwick state at ``positions`` was
    last written (meaningful for the occupied slots of :func:`occupied_slots`).

    Slot ``l`` in ``1 .. L - 2`` takes a merge when a state advances to ``b`` with
    ``advance_level(b - 1, b) == l``, i.e. ``b`` an odd multiple of ``2 ** (l - 1)``; the last slot
    when ``b`` is any multiple of ``2 ** (L - 2)``.  Both are ``p`` with its low ``max(l - 1, 0)`` bits
    cleared (slot 0, which holds keys only for ``L == 1``, is written by every token).  A pending
    decoding transform older than this never reached the slot.
    """
    if L < 1:
        raise ValueError(f"the number of levels L must be >= 1, got {L}")
    p = torch.as_tensor(positions).to(torch.int64).unsqueeze(-1)
    shift = (torch.arange(L, device=p.device) - 1).clamp(min=0)
    return (p >> shift) << shift
