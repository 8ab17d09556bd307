"""Exhaustive small checks of fla_loglinear.levels against brute-force Fenwick definitions."""
import pytest
import torch
import triton
import triton.language as tl

from fla_loglinear.levels import (
    advance_level,
    bit_length,
    buckets,
    clamp_level,
    level,
    level_matrix,
    num_levels,
    occupied_slots,
    slot_written_at,
    state_slot_weights,
)
from fla_loglinear.ops import triton_levels as tlv

MAX_T = 130


def fenwick_buckets(t):
    """The Fenwick tree partition of [0, t]: {t} at level 0, then strip the lowest set bit of t
    repeatedly; a stripped bit of size 2^(l-1) is the bucket of level l.  Returns {level: set}."""
    out = {0: {t}}
    rem = t
    while rem:
        low = rem & -rem
        out[low.bit_length()] = set(range(rem - low, rem))
        rem -= low
    return out


def brute_level(t, s):
    for lvl, keys in fenwick_buckets(t).items():
        if s in keys:
            return lvl
    raise AssertionError(f"key {s} is in no bucket of query {t}")


def test_level_matches_fenwick_partition():
    for t in range(MAX_T):
        for s in range(t + 1):
            assert level(t, s) == brute_level(t, s), (t, s)


def test_level_rejects_keys_after_query():
    with pytest.raises(ValueError, match="0 <= s <= t"):
        level(3, 4)
    with pytest.raises(ValueError):
        level(3, -1)


def test_buckets_partition_the_prefix():
    for t in range(MAX_T):
        bs = buckets(t)
        covered = []
        for lvl, start, stop in bs:
            keys = list(range(start, stop))
            assert keys, (t, lvl)
            assert len(keys) == (1 if lvl == 0 else 2 ** (lvl - 1)), (t, lvl)
            assert all(level(t, s) == lvl for s in keys), (t, lvl)
            covered += keys
        assert sorted(covered) == list(range(t + 1)), t
        assert len(covered) == len(set(covered)), t
        assert [b[0] for b in bs] == sorted(b[0] for b in bs), "finest first"
        assert {lvl: set(range(a, b)) for lvl, a, b in bs} == fenwick_buckets(t), t
    with pytest.raises(ValueError):
        buckets(-1)


def test_num_levels_is_the_largest_level_plus_one():
    for T in range(1, MAX_T):
        needed = 1 + max(level(t, s) for t in range(T) for s in range(t + 1))
        assert num_levels(T) == needed, T
    with pytest.raises(ValueError):
        num_levels(0)


def test_advance_level_is_the_merge_rule():
    # Keys already in the state at a (s < a): their level seen from b is max(level at a, m).
    for b in range(1, 70):
        for a in range(b):
            m = advance_level(a, b)
            for s in range(a):
                assert level(b, s) == max(level(a, s), m), (a, b, s)
    # One token, and any start inside an aligned chunk: the new keys all land in slot m.
    for a in range(200):
        assert level(a + 1, a) == advance_level(a, a + 1)
    for C in (1, 2, 4, 8, 16):
        for b in range(C, 130, C):
            for a in range(b - C, b):
                assert {level(b, s) for s in range(a, b)} == {advance_level(a, b)}, (a, b, C)
    for bad in ((3, 3), (4, 2), (-1, 2)):
        with pytest.raises(ValueError):
            advance_level(*bad)


def test_clamp_level():
    for L in range(1, 6):
        for lvl in range(12):
            assert clamp_level(lvl, L) == min(lvl, L - 1)
        t = torch.arange(12)
        assert torch.equal(clamp_level(t, L), torch.tensor([min(x, L - 1) for x in range(12)]))
    with pytest.raises(ValueError):
        clamp_level(3, 0)


def test_bit_length_matches_python():
    gen = torch.Generator().manual_seed(0)
    vals = [0, 1, 2, 3, 4, 7, 8, 2**31 - 1, 2**31, 2**40 + 5, 2**62, 2**63 - 1]
    vals += torch.randint(0, 2**62, (200,), generator=gen).tolist()
    x = torch.tensor(vals, dtype=torch.int64)
    assert bit_length(x).tolist() == [v.bit_length() for v in vals]
    assert bit_length(torch.tensor([[5, 0], [9, 1]], dtype=torch.int32)).tolist() == [[3, 0], [4, 1]]


def test_level_matrix():
    t = torch.arange(5, 40)
    s = torch.arange(0, 45)
    lm = level_matrix(t, s)
    expect = [[level(a, b) if b <= a else -1 for b in s.tolist()] for a in t.tolist()]
    assert lm.tolist() == expect


def test_state_slot_weights_follow_the_keys_in_each_slot():
    gen = torch.Generator().manual_seed(1)
    for L in (1, 2, 3, 5, 9):
        for a in range(0, 40):
            for t in range(a, a + 20):
                lam = torch.rand(L, generator=gen, dtype=torch.float64)
                w = state_slot_weights(lam, torch.tensor(t), torch.tensor(a))
                assert w.shape == (L,)
                for s in range(a):
                    slot = clamp_level(level(a, s), L)
                    assert w[slot] == lam[clamp_level(level(t, s), L)], (L, a, t, s)
                # Nothing has merged yet at t == a: every slot is the query's own level.
                if t == a:
                    assert torch.equal(w, lam)
    lam = torch.rand(3, 4, 6, generator=gen)
    t = torch.tensor([[5], [9], [100]]).expand(3, 4)
    a = torch.tensor([[3], [9], [64]]).expand(3, 4)
    w = state_slot_weights(lam, t, a)
    for i in range(3):
        for j in range(4):
            assert torch.equal(w[i, j], state_slot_weights(lam[i, j], t[i, j], a[i, j]))


def test_occupied_slots_are_the_slots_keys_fall_in():
    for L in range(1, 9):
        positions = torch.arange(MAX_T)
        got = occupied_slots(positions, L)
        assert got.shape == (MAX_T, L)
        for p in range(MAX_T):
            # the keys [0, p) relative to the next query p, each in slot min(level, L - 1)
            want = {min(brute_level(p, s), L - 1) for s in range(p)}
            assert {l for l in range(L) if got[p, l]} == want, (p, L)
    with pytest.raises(ValueError, match="L must be >= 1"):
        occupied_slots(torch.tensor([3]), 0)


def test_slot_written_at_is_the_last_merge_into_each_slot():
    """Advancing a state token by token from 0 (a merge into slot min(advance_level(b - 1, b), L - 1)
    at every b), the last b that wrote each occupied slot."""
    for L in range(1, 9):
        got = slot_written_at(torch.arange(MAX_T), L)
        last = {}
        for p in range(MAX_T):
            if p > 0:
                last[min(advance_level(p - 1, p), L - 1)] = p
            for l in range(L):
                if occupied_slots(torch.tensor(p), L)[l]:
                    assert got[p, l].item() == last[l], (p, L, l)
    with pytest.raises(ValueError, match="L must be >= 1"):
        slot_written_at(torch.tensor([3]), 0)


@triton.jit
def _probe(a_ptr, b_ptr, bl_out, tz_out, mm_out, occ_out, wr_out, L: tl.constexpr, NB: tl.constexpr):
    i = tl.program_id(0)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    tl.store(bl_out + i, tlv.bit_length(a ^ b, NB))
    tl.store(tz_out + i, tlv.trailing_zeros(b, NB))
    tl.store(mm_out + i, tlv.merge_slot(a, b, L))
    for l in tl.static_range(L):
        tl.store(occ_out + i * L + l, tlv.slot_occupied(b, l, L).to(tl.int8))
        tl.store(wr_out + i * L + l, tlv.slot_written_at(b, l))


def test_triton_level_helpers_match_levels():
    """fla_loglinear/ops/triton_levels.py (the in-kernel copies every kernel imports) against levels.py
    on random positions, small and large (under the interpreter on the CPU, natively with a GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    a = torch.cat([torch.randint(0, 300, (24,), generator=gen), torch.randint(0, 2 ** 40, (8,), generator=gen)])
    b = a + torch.cat([torch.randint(1, 130, (24,), generator=gen), torch.randint(1, 2 ** 30, (8,), generator=gen)])
    L, NB = 9, 48
    outs = [torch.empty(a.numel(), dtype=torch.int64) for _ in range(3)]
    occ = torch.empty(a.numel(), L, dtype=torch.int8)
    wr = torch.empty(a.numel(), L, dtype=torch.int64)
    args = [x.to(device) for x in (a, b, *outs, occ, wr)]
    _probe[(a.numel(),)](*args, L=L, NB=NB)
    bl, tz, mm, occ, wr = (x.cpu() for x in args[2:])
    assert bl.tolist() == bit_length(a ^ b).tolist()
    assert tz.tolist() == [(x & -x).bit_length() - 1 for x in b.tolist()]
    assert mm.tolist() == [min(advance_level(x, y), L - 1) for x, y in zip(a.tolist(), b.tolist())]
    assert torch.equal(occ.bool(), occupied_slots(b, L))
    assert torch.equal(wr, slot_written_at(b, L))
