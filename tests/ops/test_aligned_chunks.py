"""Aligned chunk tables and the two chunk layouts built on them, against loops over host ints."""
import itertools
import random

import pytest
import torch

from fla_loglinear.ops.aligned_chunks import (
    aligned_chunk_counts,
    aligned_chunk_table,
    token_offsets,
)
from fla_loglinear.ops.log_linear_attn.chunk import ChunkLayout
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import (
    _make_layout,
    make_layout,
)

CUDA = torch.cuda.is_available()
SEEDS = range(40)


def random_case(seed):
    """(C, B, T, cu_seqlens or None, starts): lengths of 1, around C and random; starts on and off the grid."""
    rng = random.Random(seed)
    C = rng.choice([4, 16, 64])
    if rng.random() < 0.25:
        B, T, cu = rng.randint(1, 3), rng.randint(1, 3 * C), None
        N = B
    else:
        N = rng.randint(1, 7)
        lens = [rng.choice([1, 1, C - 1, C, C + 1, rng.randint(1, 5 * C)]) for _ in range(N)]
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        B, T = 1, cu[-1]
    starts = [rng.choice([0, C, C - 1, rng.randint(1, 20 * C)]) for _ in range(N)]
    return C, B, T, cu, starts


def spans(B, T, cu):
    return [(n * T, T) for n in range(B)] if cu is None else [(cu[n], cu[n + 1] - cu[n]) for n in range(len(cu) - 1)]


def loop_chunks(lengths_and_starts, C):
    """Per sequence the aligned chunks its tokens touch: (rows (seq, local chunk), first chunk of each)."""
    rows, firsts = [], [0]
    for n, (length, p0) in enumerate(lengths_and_starts):
        touched = sorted({(p0 + t) // C for t in range(length)})
        rows += [(n, j) for j in range(len(touched))]
        firsts.append(firsts[-1] + len(touched))
    return rows, firsts


@pytest.mark.parametrize("seed", SEEDS)
def test_aligned_chunks_match_loops(seed):
    C, B, T, cu, starts = random_case(seed)
    sp = spans(B, T, cu)
    offsets = token_offsets(B, T, cu)
    assert offsets == [bos for bos, _ in sp] + [sp[-1][0] + sp[-1][1]]
    rows, firsts = loop_chunks([(n, p0) for (_, n), p0 in zip(sp, starts)], C)
    leads = [p0 % C for p0 in starts]
    counts = aligned_chunk_counts(offsets, leads, C)
    assert counts == [b - a for a, b in itertools.pairwise(firsts)]

    dtype = random.Random(seed).choice([torch.int32, torch.int64])
    indices, chunk_offsets = aligned_chunk_table(torch.tensor(offsets, dtype=dtype), torch.tensor(leads), C, sum(counts))
    assert indices.dtype == chunk_offsets.dtype == torch.int64
    assert indices.tolist() == [list(r) for r in rows]
    assert chunk_offsets.tolist() == firsts


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_unknown_start_lead_bounds_every_start(seed):
    C, B, T, cu, _ = random_case(seed)
    offsets = token_offsets(B, T, cu)
    bound = aligned_chunk_counts(offsets, C, C)
    for length, spare in zip([n for _, n in spans(B, T, cu)], bound):
        assert spare == -(-length // C) + 1
        assert spare >= max(len(loop_chunks([(length, p0)], C)[0]) for p0 in range(C))
    indices, _ = aligned_chunk_table(torch.tensor(offsets), C, C, sum(bound))
    assert indices.tolist() == [[n, j] for n, k in enumerate(bound) for j in range(k)]


@pytest.mark.parametrize("seed", SEEDS)
def test_padded_layout_matches_loops(seed):
    C, B, T, cu, starts = random_case(seed)
    layout = make_layout(B, T, None if cu is None else torch.tensor(cu), starts, "cpu", C)
    sp = spans(B, T, cu)
    _, firsts = loop_chunks([(n, p0) for (_, n), p0 in zip(sp, starts)], C)
    slot, row_pos, chunk_start = [0] * (B * T), [], []
    for n, ((bos, length), p0) in enumerate(zip(sp, starts)):
        for t in range(length):
            slot[bos + t] = (firsts[n] + (p0 + t) // C - p0 // C) * C + (p0 + t) % C
        for j in range(firsts[n + 1] - firsts[n]):
            base = (p0 // C + j) * C
            row_pos.append([base + i for i in range(C)])
            chunk_start.append(max(base, p0))
    assert layout.NC == firsts[-1]
    assert layout.slot_idx.tolist() == slot
    assert layout.chunk_offsets.dtype == torch.int32 and layout.chunk_offsets.tolist() == firsts
    assert layout.pos_start.tolist() == starts
    assert layout.pos_end.tolist() == [p0 + n for (_, n), p0 in zip(sp, starts)]
    assert layout.row_pos.tolist() == row_pos
    assert layout.chunk_start.tolist() == chunk_start
    assert layout.identity == all(p0 % C == 0 and n % C == 0 for (_, n), p0 in zip(sp, starts))
    assert layout.partial_end == any((p0 + n) % C for (_, n), p0 in zip(sp, starts))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("from_state", [False, True])
def test_scalar_layout_matches_loops(seed, from_state):
    C, B, T, cu, starts = random_case(seed)
    positions = torch.tensor(starts) if from_state else None
    layout = ChunkLayout(B, T, None if cu is None else torch.tensor(cu), positions, C, "cpu")
    sp = spans(B, T, cu)
    slots = [-(-n // C) + from_state for _, n in sp]
    assert (layout.N, layout.NT, layout.max_chunks) == (len(sp), sum(slots), max(slots))
    assert layout.chunk_indices.dtype == torch.int32
    assert layout.chunk_indices.tolist() == [[n, j] for n, k in enumerate(slots) for j in range(k)]
    assert layout.seq_bos.tolist() == [bos for bos, _ in sp]
    assert layout.seq_len.tolist() == [n for _, n in sp]
    assert layout.chunk_offsets.tolist() == [sum(slots[:n]) for n in range(len(slots) + 1)]
    assert layout.pos0.tolist() == (starts if from_state else [0] * len(sp))
    assert all(x.dtype == torch.int64 for x in (layout.seq_bos, layout.seq_len, layout.chunk_offsets, layout.pos0))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_layouts_do_not_sync():
    # host-known offsets and starts: the only read-back allowed is cu_seqlens.tolist(), not taken here
    _make_layout.cache_clear()
    positions, cu = torch.tensor([70, 3], device="cuda"), torch.tensor([0, 100, 181], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ChunkLayout(2, 150, None, positions, 64, "cuda")
        make_layout(1, 181, [0, 100, 181], [70, 3], "cuda")
        aligned_chunk_table(cu, positions % 64, 64, 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
