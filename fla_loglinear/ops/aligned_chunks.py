"""Chunks aligned to absolute positions: what the chunk layouts of both ops share.

A sequence of ``n`` tokens that starts at absolute position ``p0`` spans the aligned chunks
``p0 // C .. (p0 + n - 1) // C``: as many as fla's chunks (aligned to the sequence's own start) of
the same sequence padded in front by its *lead* ``p0 % C``.  So the layouts describe their chunks
as fla's chunks of lead-padded sequences.  Where ``p0`` is not known on the host, a lead of ``C``
bounds every start at the cost of one spare chunk slot.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from fla.ops.utils.index import (
    prepare_chunk_indices_static,
    prepare_cu_seqlens_from_lens,
    prepare_lens,
)

__all__ = ["aligned_chunk_counts", "aligned_chunk_table", "token_offsets"]


def token_offsets(B: int, T: int, cu_seqlens: Sequence[int] | None) -> list[int]:
    """Host token offsets ``[N + 1]``: ``cu_seqlens`` itself, or those of ``B`` sequences of ``T`` tokens."""
    if cu_seqlens is None:
        return list(range(0, B * T + 1, T))
    return [int(x) for x in cu_seqlens]


def aligned_chunk_counts(offsets: Sequence[int], leads: int | Sequence[int], C: int) -> list[int]:
    """Host chunk count of each sequence of ``offsets`` padded in front by ``leads`` (one or per sequence).

    Host ints, not fla's prepare_chunk_offsets: they size grids and key caches, and reading a
    tensor back would sync the device.
    """
    N = len(offsets) - 1
    leads = [leads] * N if isinstance(leads, int) else leads
    return [triton.cdiv(lead + e - s, C) for lead, s, e in zip(leads, offsets[:-1], offsets[1:])]


def aligned_chunk_table(
    cu_seqlens: torch.Tensor, leads: int | torch.Tensor, C: int, NC: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chunk_indices [NC, 2], chunk_offsets [N + 1])`` int64 on the device of ``cu_seqlens``.

    ``chunk_indices`` holds (sequence, chunk of the sequence) of every chunk, ``chunk_offsets`` each
    sequence's first chunk; ``NC`` is the sum of :func:`aligned_chunk_counts`.  No host sync.
    """
    padded = prepare_cu_seqlens_from_lens(prepare_lens(cu_seqlens) + leads, dtype=torch.int64)
    # Not prepare_chunk_indices / _segmented_arange: on device counts they read the total back
    # (repeat_interleave with no output size), and given host counts they copy the result over.
    # The fixed-shape builder takes the host-known NC; at that exact size it has no sentinel rows.
    return prepare_chunk_indices_static(padded, C, NC)
