"""Launch shapes of the Gated DeltaNet decode kernel swept on a GPU (CUDA only).

    python benchmarks/dev/sweep_gdn_decode.py
    python benchmarks/dev/sweep_gdn_decode.py --host   # host time of a step, its kernels, and its Python calls
    python benchmarks/dev/sweep_gdn_decode.py --phases # GPU time of the in-place step per pending-log fill level

At the decode benchmark's shape (B = 64 at position 100,000, H = 16, K = V = 128, in place), each
setting replaces ``fused_recurrent._decode_blocks`` (the V block width and warps) and prints the time
of a step on the GPU (CUDA events over back-to-back steps) and in wall time (synced after each step,
as the benchmark measures it), with fla's step alongside.  The settings' results are checked by
``test_gpu_decode_launch_shapes`` (tests/ops), not here.
"""
from __future__ import annotations

import sys
import time

import torch

from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent

sys.path.insert(0, __file__.rsplit("/", 2)[0])
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from sweep_scalar import report, time_ms  # noqa: E402
from test_bench_log_linear_gated_delta_rule_decode import decode_step, reset_and_step  # noqa: E402

DEFAULT = fused_recurrent._decode_blocks
# (BV, num_warps); None: the defaults
SETTINGS = [None, (16, 4), (64, 4), (32, 2), (32, 8), (64, 8), (16, 2), (128, 8)]


def use_blocks(setting):
    """(name, undo): the decode step launched with ``setting``'s (BV, num_warps) until ``undo()``."""
    if setting is None:
        return "defaults", lambda: None
    BV, nw = setting
    fused_recurrent._decode_blocks = lambda K, V, pending=False: (DEFAULT(K, V)[0], BV, nw)
    return f"BV={BV} warps={nw}", lambda: setattr(fused_recurrent, "_decode_blocks", DEFAULT)


def wall_ms(step, iters: int = 50) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        step()
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3


def host_profile() -> None:
    """Per step of fla and of ours (in place): the host time until the call returns (no sync), the GPU
    time of its kernels (torch.profiler), and ours's Python calls by own time (cProfile).  A synced step
    takes about the host time up to the last launch plus the kernels' time."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    with torch.no_grad():
        for impl in ("fla", "ours"):
            reset, step = decode_step(impl)
            for _ in range(5):
                reset()
                step()
            torch.cuda.synchronize()
            host = []
            for _ in range(50):
                reset()
                torch.cuda.synchronize()
                t = time.perf_counter()
                step()
                host.append(time.perf_counter() - t)
                torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(20):
                    reset()
                    step()
                torch.cuda.synchronize()
            kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
            gpu = sum(e.device_time_total for e in kernels) / 20
            print(f"{impl}: host {1e6 * sorted(host)[25]:.1f} us (median), kernels {gpu:.1f} us per step: "
                  + ", ".join(f"{e.key[:50]} x{e.count // 20} {e.device_time_total / 20:.1f}" for e in kernels),
                  flush=True)
        # step is ours here, the loop's last
        cProfile.runctx("for _ in range(200): reset(); step()", globals(), {"reset": reset, "step": step},
                        "/tmp/decode.prof")
        torch.cuda.synchronize()
    pstats.Stats("/tmp/decode.prof").sort_stats("tottime").print_stats(15)


def phases() -> None:
    """Per launch shape, the GPU time of the in-place step at 100,000 with ``r = 0 .. F - 1``
    transitions pending (``r = F - 1`` applies the log to every occupied slot)."""
    from fla_loglinear.ops.log_linear_gated_delta_rule.pending import PENDING_CAPACITY as F

    torch.manual_seed(0)
    with torch.no_grad():
        ours = reset_and_step("ours")
        for setting in SETTINGS:
            name, undo = use_blocks(setting)
            # time_ms times back-to-back calls; F calls per sample walk r through 0 .. F - 1 once
            report(name, 20, lambda: f"mean over r {time_ms(lambda: [ours() for _ in range(F)], 10) / F:.4f} ms", undo)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = [[] for _ in range(F)]
        for i in range(10 * F):
            start.record()
            ours()
            end.record()
            end.synchronize()
            # every timing above ran whole cycles of F calls, so call i has r = i % F
            times[i % F].append(start.elapsed_time(end))
        print("defaults, per r (ms): " + " ".join(f"{sorted(t)[len(t) // 2]:.3f}" for t in times), flush=True)


def main() -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        fla = reset_and_step("fla")
        print(f"{'fla fused_recurrent_gated_delta_rule':<36} gpu {time_ms(fla, 50):.4f} ms  wall {wall_ms(fla):.4f} ms",
              flush=True)
        ours = reset_and_step("ours")
        for setting in SETTINGS:
            name, undo = use_blocks(setting)
            report(name, 36, lambda: f"gpu {time_ms(ours, 50):.4f} ms  wall {wall_ms(ours):.4f} ms", undo)


if __name__ == "__main__":
    if "--host" in sys.argv:
        host_profile()
    elif "--phases" in sys.argv:
        phases()
    else:
        main()
