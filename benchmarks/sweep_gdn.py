"""Block widths and launch settings of the Gated DeltaNet slot scans swept on a GPU (CUDA only).

    python benchmarks/sweep_gdn.py 4096 65536
    python benchmarks/sweep_gdn.py 8192 --only "scans BV=16 warps=4;scans BV=32 warps=4"

Each setting replaces attributes of ``chunk_inter`` (``_scan_blocks``: the V block width and warps of
the sequential sweeps, forward, replay, slot-gradient scan; ``PREFETCH`` / ``prefetches``: their
one-slot-ahead loads) and/or wraps a kernel's ``run`` (the per-chunk gradient kernel's, the chunk-local
kernels') to override its launch options, as ``sweep_scalar.py`` does; the op's code is untouched.  Per
length it prints the fwd+bwd time (CUDA events, after a warm-up that compiles) and the largest difference
of the output and every gradient from the defaults' (relative to their largest value), so that a fast
setting that computes something else shows.  Results run 19 swept the settings before the sweeps' blocks
depended on the number of programs (then 32-wide blocks and 8 warps at K = 128 everywhere); the defaults
now follow its winners.
"""
from __future__ import annotations

import sys

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_inter, chunk_local_fused

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from profile_ops import make_inputs, make_step  # noqa: E402
from sweep_scalar import apply, time_ms  # noqa: E402

DEFAULT_BLOCKS = chunk_inter._scan_blocks
GRADS = [chunk_inter.chunk_inter_grads_kernel]
LOCAL_FWD = [chunk_local_fused.chunk_local_fused_fwd_kernel]
LOCAL_BWD = [chunk_local_fused.chunk_local_fused_bwd_kernel]


def blocks(BV: int | None = None, num_warps: int | None = None):
    """``_scan_blocks`` with the V block width and / or the warps replaced, whatever the programs."""
    def _scan_blocks(K, V, few):
        BK, bv, nw = DEFAULT_BLOCKS(K, V, few)
        return BK, BV or bv, num_warps or nw
    return _scan_blocks


# chunk_inter's schedule switches (segments_forward, sweeps_share_sms, splits_grads) forced on at every
# length where a side stream exists, whatever the number of programs
def segments_everywhere(NH, V, device):
    return device.type == "cuda"


def sweeps_beside_everywhere(programs, device):
    return device.type == "cuda"


def grads_split_everywhere(NH, V, device, beside):
    return beside or device.type != "cuda"


# name -> (chunk_inter attributes to replace, [(kernels, launch options)])
SETTINGS = {
    "defaults": ({}, []),
    "scans BV=16 warps=4": (dict(_scan_blocks=blocks(16, 4)), []),
    "scans BV=32 warps=4": (dict(_scan_blocks=blocks(32, 4)), []),
    "scans BV=32 warps=8 (run 18)": (dict(_scan_blocks=blocks(32, 8)), []),
    # 16-bit only (8-column TF32 products are the narrow wgmma of triton-lang/triton#10629); Triton takes
    # mma v2 for them; 10% slower at 32K and 64K (results run 27)
    "scans BV=8 warps=4": (dict(_scan_blocks=blocks(8, 4)), []),
    # the sweeps' one-slot-ahead loads (on by default at K = 128 with 16-wide blocks)
    "no prefetch": (dict(PREFETCH=False), []),
    # the backward's replay and slot-gradient scan one after the other (side by side by default)
    "replay then scan": (dict(SIDE_BY_SIDE=False), []),
    # the per-chunk gradients of the later half beside the scan's second half (on where programs are few)
    "grads after the scan": (dict(SPLIT_GRADS=False), []),
    "grads split at every length": (dict(splits_grads=grads_split_everywhere), []),
    # the forward sweep in one piece where programs are few (in segments by default there)
    "no segmented forward": (dict(SEGMENTED=False), []),
    # the sequential chain beside the side stream on the current stream, not on one of the highest priority
    "no lead priority": (dict(LEAD_PRIORITY=False), []),
    "segments of 8 chunks": (dict(SEGMENT_CHUNKS=8), []),
    "segments of 12 chunks": (dict(SEGMENT_CHUNKS=12), []),
    "segments of 16 chunks": (dict(SEGMENT_CHUNKS=16), []),
    "segments of 24 chunks": (dict(SEGMENT_CHUNKS=24), []),
    "segments of 32 chunks": (dict(SEGMENT_CHUNKS=32), []),
    "segments of 64 chunks": (dict(SEGMENT_CHUNKS=64), []),
    # the forward's slots stored by segments and its output computed beside the next segment's sweep, where
    # programs are many too (8K / 16K: two programs per SM, the 32-wide output sweep spills)
    "segmented forward at every length": (dict(segments_forward=segments_everywhere), []),
    "segmented forward at every length, 64 chunks": (dict(segments_forward=segments_everywhere, SEGMENT_CHUNKS=64),
                                                     []),
    "segmented forward at every length, 8 chunks": (dict(segments_forward=segments_everywhere, SEGMENT_CHUNKS=8), []),
    "side by side at every length": (dict(sweeps_share_sms=sweeps_beside_everywhere), []),
    "side by side BV=32": (dict(_scan_blocks=blocks(32, 4)), []),
    # 64-wide sweep blocks halve the programs at 8K / 16K (256 -> 128 at 8K), so that the replay fits
    # beside the scan (run 38: side by side with two programs per SM was slower)
    "scans BV=64 warps=4": (dict(_scan_blocks=blocks(64, 4)), []),
    "scans BV=64 warps=8": (dict(_scan_blocks=blocks(64, 8)), []),
    "side by side BV=64": (dict(_scan_blocks=blocks(64, 4), sweeps_share_sms=sweeps_beside_everywhere), []),
    "side by side BV=64 warps=8": (dict(_scan_blocks=blocks(64, 8), sweeps_share_sms=sweeps_beside_everywhere), []),
    "side by side BV=64 split grads": (dict(_scan_blocks=blocks(64, 4), sweeps_share_sms=sweeps_beside_everywhere,
                                            splits_grads=grads_split_everywhere), []),
    "prefetch BV=32 too": (dict(prefetches=lambda BK, BV: BK == 128), []),
    # the per-chunk gradient kernel's V blocks with 16-bit tiles at K = 128 (64 by default, run 43)
    "grads BV=32": (dict(GRADS_BV=None), []),
    "grads BV=128": (dict(GRADS_BV=128), []),
    "grads stages=1": ({}, [(GRADS, dict(num_stages=1))]),
    "grads warps=4": ({}, [(GRADS, dict(num_warps=4))]),
    # the chunk-local kernels; the backward is the largest kernel at 4K (run 20), on 4 warps since run 23
    "local bwd warps=8": ({}, [(LOCAL_BWD, dict(num_warps=8))]),
    "local bwd stages=1": ({}, [(LOCAL_BWD, dict(num_stages=1))]),
    "local bwd stages=2": ({}, [(LOCAL_BWD, dict(num_stages=2))]),
    "local fwd warps=4": ({}, [(LOCAL_FWD, dict(num_warps=4))]),
}


def make_case(T: int):
    """A fwd+bwd step of the benchmark shape that returns the output and every gradient."""
    leaves, do = make_inputs("gdn", T)
    forward = make_step("gdn", T, forward_only=True, leaves=leaves)

    def step():
        o = forward()
        return [o.detach()] + list(torch.autograd.grad(o, leaves, do))
    return step


def max_rel_diff(got, want) -> float:
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
               for a, b in zip(got, want))


def main(lengths: list[int], only: list[str] | None = None) -> None:
    """Times every setting (or those named in ``only``, after the defaults) at each length."""
    steps = {T: make_case(T) for T in lengths}
    reference = {T: steps[T]() for T in lengths}
    names = list(SETTINGS) if not only else ["defaults", *only]
    for name in names:
        replace, launches = SETTINGS[name]
        saved = {attr: getattr(chunk_inter, attr) for attr in replace}
        for attr, value in replace.items():
            setattr(chunk_inter, attr, value)
        undo = apply(launches)
        try:
            cols = []
            for T in lengths:
                diff = max_rel_diff(steps[T](), reference[T])
                cols.append(f"T={T}: {time_ms(steps[T]):7.3f} ms (diff {diff:.1e})")
            print(f"{name:<36} " + "  ".join(cols), flush=True)
        except Exception as e:  # a setting that does not compile or fit is a result, not the end
            print(f"{name:<36} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            undo()
            for attr, value in saved.items():
                setattr(chunk_inter, attr, value)


if __name__ == "__main__":
    # lengths, then optionally --only "setting;setting"
    args, only = sys.argv[1:], None
    if "--only" in args:
        i = args.index("--only")
        args, only = args[:i], args[i + 1].split(";")
    main([int(x) for x in args] or [4096, 65536], only)
