"""In-kernel copies of the level rules of :mod:`fla_loglinear.levels` (which stays the reference),
imported by every Triton kernel of both ops; tests/test_levels.py checks them under the interpreter.

Triton has no ``int.bit_length``; these unrolled versions must give exactly what
``levels.bit_length`` / ``levels.level`` give for non-negative integers below ``2 ** NBITS``.
"""
import triton
import triton.language as tl


@triton.jit
def bit_length(x, NBITS: tl.constexpr):
    """``levels.bit_length`` elementwise (scalars or blocks) for ``0 <= x < 2 ** NBITS``."""
    out = x * 0
    for b in tl.static_range(NBITS):
        out += ((x >> b) > 0).to(x.dtype)
    return out


@triton.jit
def trailing_zeros(x, NBITS: tl.constexpr):
    """Number of trailing zero bits of ``x >= 1``: a chunk boundary ``x`` ends the Fenwick node of
    chunk level ``trailing_zeros(x) + 1`` (the ``2 ** trailing_zeros(x)`` chunks before ``x``)."""
    return bit_length(x & (-x), NBITS) - 1


@triton.jit
def slot_occupied(p, l, L: tl.constexpr):
    """``levels.occupied_slots`` for slot ``l`` of a state at position ``p`` (a scalar int64)."""
    shift = tl.maximum(l - 1, 0)
    last = p >= ((p * 0 + 1) << shift)
    inner = (l > 0) & (((p >> shift) & 1) == 1)
    return tl.where(l == L - 1, last, inner)


@triton.jit
def slot_written_at(p, l):
    """``levels.slot_written_at`` for slot ``l`` of a state at position ``p`` (a scalar int64)."""
    shift = tl.maximum(l - 1, 0)
    return (p >> shift) << shift


@triton.jit
def merge_slot(a, b, L: tl.constexpr):
    """``levels.advance_level(a, b)`` clamped to the last slot, for scalar positions ``0 <= a, b``: the
    slot that every slot ``<=`` it merges into when a state moves from ``a`` to ``b``."""
    # a loop over the bits actually set: cheaper than bit_length's fixed unrolling for one scalar
    x = a ^ b
    m = 0
    while x > 0:
        x = x >> 1
        m += 1
    return tl.minimum(m, L - 1)
