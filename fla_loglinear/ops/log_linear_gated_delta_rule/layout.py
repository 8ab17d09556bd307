"""The aligned chunk layout of the chunked log-linear gated delta rule: token rows padded into chunks.

Chunks have ``C = 64`` tokens and are aligned to absolute positions: a sequence starting at ``p0``
gets a first partial chunk ``[p0, ceil_C(p0))``.  Tokens are scattered into a zero-padded
``[NC, C]`` layout; a padded token has ``k = v = q = 0``, ``g = beta = 0``, so its transition is the
identity and it neither writes nor reads.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from fla.ops.utils.index import prepare_lens

from fla_loglinear.ops.aligned_chunks import (
    aligned_chunk_counts,
    aligned_chunk_table,
    token_offsets,
)

__all__ = ["CHUNK_SIZE", "PaddedChunkLayout", "make_layout", "to_chunks", "from_tokens", "pad_tokens"]

# the one chunk size of the Gated DeltaNet kernels (fla's chunk_gated_delta_rule uses 64 too)
CHUNK_SIZE = 64


@dataclass
class PaddedChunkLayout:
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


def make_layout(B: int, T: int, cu_seqlens, positions, device, C: int = CHUNK_SIZE) -> PaddedChunkLayout:
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
def _make_layout(B: int, T: int, offs, starts, device: torch.device, C: int) -> PaddedChunkLayout:
    offsets = token_offsets(B, T, offs)
    N = len(offsets) - 1
    p0 = [0] * N if starts is None else list(starts)
    lens = [b - a for a, b in itertools.pairwise(offsets)]
    NC = sum(aligned_chunk_counts(offsets, [p % C for p in p0], C))
    # one pageable copy without a sync: the driver stages the host list before the call returns
    dev = torch.tensor([*offsets, *p0], dtype=torch.int64).to(device, non_blocking=True)
    cu, start = dev.split([N + 1, N])
    chunk_indices, chunk_offsets = aligned_chunk_table(cu, start % C, C, NC)
    seq_of_chunk, local = chunk_indices.unbind(1)
    lens_d = prepare_lens(cu)
    # not fla's prepare_sequence_ids: it would read the lengths back or copy its result over
    seq_of_token = torch.repeat_interleave(torch.arange(N, device=device), lens_d, output_size=B * T)
    shift = chunk_offsets[:-1] * C + start % C - cu[:-1]
    chunk_base = ((start // C)[seq_of_chunk] + local) * C
    return PaddedChunkLayout(
        C=C,
        NC=NC,
        slot_idx=torch.arange(B * T, device=device) + shift[seq_of_token],
        chunk_offsets=chunk_offsets.to(torch.int32),
        pos_start=start,
        pos_end=start + lens_d,
        row_pos=chunk_base[:, None] + torch.arange(C, device=device),
        chunk_start=torch.maximum(chunk_base, start[seq_of_chunk]),
        identity=all(p % C == 0 and n % C == 0 for p, n in zip(p0, lens)),
        partial_end=any((p + n) % C != 0 for p, n in zip(p0, lens)),
    )


def to_chunks(x: torch.Tensor, layout: PaddedChunkLayout) -> torch.Tensor:
    """``[B, T, H, ...]`` -> ``[NC, H, C, ...]`` zero-padded, differentiable."""
    if layout.identity:
        return x.reshape(layout.NC, layout.C, *x.shape[2:]).transpose(1, 2)
    flat = x.reshape(-1, *x.shape[2:])
    out = flat.new_zeros(layout.NC * layout.C, *x.shape[2:]).index_copy(0, layout.slot_idx, flat)
    return out.reshape(layout.NC, layout.C, *x.shape[2:]).transpose(1, 2)


def from_tokens(x: torch.Tensor, layout: PaddedChunkLayout, B: int, T: int) -> torch.Tensor:
    """Padded token rows ``[NC * C, H, ...]`` -> ``[B, T, H, ...]`` (no copy when aligned)."""
    if not layout.identity:
        x = x[layout.slot_idx]
    return x.reshape(B, T, *x.shape[1:])


def pad_tokens(x: torch.Tensor, layout: PaddedChunkLayout) -> torch.Tensor:
    """``[B, T, H, ...]`` -> ``[NC * C, H, ...]`` zero-padded token rows (no copy when aligned)."""
    flat = x.reshape(-1, *x.shape[2:])
    if layout.identity:
        return flat.contiguous()
    return flat.new_zeros(layout.NC * layout.C, *x.shape[2:]).index_copy(0, layout.slot_idx, flat)
