"""The launch choices of the chunked log-linear gated delta rule, one frozen object per call.

:func:`plan_for` picks them from the shapes and the device; the op takes another through its
private ``_plan`` keyword (sweeps, tests, or a caller that wants no extra CUDA streams).
The measurements behind each rule are in docs/design.md.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton

from fla_loglinear.ops.triton_env import interpreter_on

__all__ = ["GDNLaunchPlan", "plan_for", "fused_local_supported", "out_blocks", "reloads_operands",
           "grads_launches", "LOCAL_IMPLS"]

LOCAL_IMPLS = ("triton", "torch")
# chunks per sequence in one segment of the segmented forward: the best of 8-64 at 64K tokens, and two
# segment buffers of N * SEGMENT_CHUNKS * HV * L * K * V stay a few hundred MB there
SEGMENT_CHUNKS = 24
# V block width of the per-chunk gradient kernel with 16-bit tiles at K = 128: wider blocks amortise
# the slot reads over more columns and still fit shared memory (tests/ops/sm90.py)
GRADS_BV = 64


@dataclasses.dataclass(frozen=True)
class GDNLaunchPlan:
    """How one call of :func:`chunk_log_linear_gated_delta_rule` runs on CUDA (or the interpreter).

    Attributes:
        local: the chunk-local (WY) part by the fused Triton kernels (``"triton"``) or batched
            PyTorch (``"torch"``, autograd backward).
        sweep_bv, sweep_warps: V block width and warps of the sequential sweeps (forward, replay,
            slot-gradient scan), one program per (sequence x value head, V block).
        prefetch: the sweeps load each slot one slot ahead, to overlap its latency with the
            previous slot's products (costs a ``[K, BV]`` tile of registers).
        grads_bv: V block width of the per-chunk gradient kernel.
        segment_chunks: ``0``: one forward sweep; else the forward sweep runs in segments of this
            many chunks per sequence, each segment's output computed by a parallel kernel from the
            slots the segment stored (beside the next segment's sweep when ``streams``).
        streams: the op may use extra CUDA streams (a side stream, and with ``lead_priority`` a
            high-priority stream for the sequential chain), joined back to the caller's stream before
            it returns.  ``False``: everything runs on the caller's stream, in program order.
        lead_priority: the sequential chain runs on the highest-priority stream, so that the side
            stream's many-program kernels never delay it.
        replay_beside: the backward's forward replay runs on the side stream beside the slot-gradient
            scan (needs ``streams``).
        split_grads: the backward's scan stops half-way and the per-chunk gradients of the chunks it
            has done run before (beside, with ``replay_beside``) its second half.
    """

    local: str
    sweep_bv: int
    sweep_warps: int
    prefetch: bool
    grads_bv: int
    segment_chunks: int
    streams: bool
    lead_priority: bool
    replay_beside: bool
    split_grads: bool

    def __post_init__(self):
        if self.local not in LOCAL_IMPLS:
            raise ValueError(f"GDNLaunchPlan.local must be one of {LOCAL_IMPLS}, got {self.local!r}")


def fused_local_supported(K: int, V: int, dtype: torch.dtype) -> bool:
    """The fused local kernels are compiled and checked for head dims 32..256 in bf16 / fp16 / fp32."""
    return dtype in (torch.bfloat16, torch.float16, torch.float32) and min(K, V) >= 32


def out_blocks(K: int, V: int) -> tuple[int, int, int]:
    """``(BK, BV, num_warps)`` of the kernels that loop over V inside (per-chunk gradients, segment output)."""
    BK = max(16, triton.next_power_of_2(K))
    num_warps = 8 if BK >= 128 else 4
    # with 8 warps Triton splits a [64, BV] product's columns over two warpgroups, and BV = 16 becomes
    # 8-column TF32 wgmma (fp32 inputs), which can read shared memory past its operand
    # (triton-lang/triton#10629); columns past V are masked, so V = 16 just takes a 32-wide block
    min_bv = 32 if num_warps == 8 else 16
    if interpreter_on():
        BV = max(min_bv, triton.next_power_of_2(V))
    else:
        BV = max(min_bv, min(triton.next_power_of_2(V), 32 if K >= 128 else 64))
    return BK, BV, num_warps


def reloads_operands(BK: int, dtype: torch.dtype) -> bool:
    """Whether the slot-gradient scan re-reads its ``[C, K]`` operands per use: fp32 at K = 256, where
    the three do not fit shared memory together; 16-bit tiles fit."""
    return BK > 128 and dtype == torch.float32


def grads_launches(dtype: torch.dtype) -> list[dict]:
    """The product groups (and launch options) the per-chunk gradient kernel runs in: all at once for
    16-bit tiles; for fp32 (three-pass TF32 products) one launch per group without multi-buffered
    loads, to fit shared memory (``tests/ops/sm90.py`` checks every launch)."""
    if dtype in (torch.bfloat16, torch.float16):
        return [dict(DQ=True, DW=True, DKD=True)]
    return [dict(DQ=dq, DW=dw, DKD=dkd, num_stages=1)
            for dq, dw, dkd in ((True, False, False), (False, True, False), (False, False, True))]


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    from fla.utils import get_multiprocessor_count

    return get_multiprocessor_count(index)


def plan_for(K: int, V: int, NH: int, dtype: torch.dtype, device, *, local: str | None = None,
             streams: bool = True, few_programs: bool | None = None) -> GDNLaunchPlan:
    """The launch plan for head dims ``K``, ``V``, ``NH`` = sequences x value heads, inputs of ``dtype``
    on ``device``.

    Args:
        local: ``"triton"`` / ``"torch"``; ``None``: the fused kernels on CUDA, PyTorch elsewhere.  The
            fused kernels need :func:`fused_local_supported` shapes; others take PyTorch either way.
        streams: ``False``: no extra CUDA stream (see :class:`GDNLaunchPlan`).
        few_programs: whether the sweeps count as having few programs (``None``: from the SM count).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if local is not None and local not in LOCAL_IMPLS:
        raise ValueError(f"local must be one of {LOCAL_IMPLS}, got {local!r}")
    if local is None:
        local = "triton" if cuda else "torch"
    if not fused_local_supported(K, V, dtype):
        local = "torch"
    sms = _sm_count(device_index(device)) if cuda else 0
    if few_programs is None:
        # 32-wide V blocks would leave half the SMs without a sweep program
        few_programs = cuda and 2 * NH * triton.cdiv(V, 32) <= sms
    BK, BV, num_warps = out_blocks(K, V)
    grads_bv = BV
    if BK == 128 and dtype in (torch.bfloat16, torch.float16) and not interpreter_on():
        grads_bv = max(BV, min(GRADS_BV, triton.next_power_of_2(V)))
    sweep_bv, sweep_warps = BV, num_warps
    if BK == 128 and not interpreter_on():
        # one warpgroup: the sweeps keep no [C, K] accumulators; with few programs 16-wide V blocks
        # give more programs (K = 256 keeps two warpgroups for its [K, BV] slot tiles)
        sweep_bv, sweep_warps = (16 if few_programs else BV), 4
    # the replay and the scan share the SMs where each has at most one program per SM
    replay_beside = cuda and streams and NH * triton.cdiv(V, sweep_bv) <= sms
    return GDNLaunchPlan(
        local=local,
        sweep_bv=sweep_bv,
        sweep_warps=sweep_warps,
        # at K = 128 with 16-wide blocks the extra tile fits the registers (32-wide kernels are full)
        prefetch=BK == 128 and sweep_bv == 16,
        grads_bv=grads_bv,
        # where the sweeps have few programs, the output's products leave the sequential chain
        segment_chunks=SEGMENT_CHUNKS if few_programs else 0,
        streams=streams,
        lead_priority=True,
        replay_beside=replay_beside,
        # where the replay runs beside the scan with few programs there is room once the replay is done;
        # off CUDA (the interpreter) always, so that the tests run it
        split_grads=not cuda or (replay_beside and few_programs),
    )
