"""Launch shapes of the Gated DeltaNet decode kernel swept on a GPU (CUDA only).

    python benchmarks/sweep_gdn_decode.py

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

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from sweep_scalar import time_ms  # noqa: E402
from test_bench_log_linear_gated_delta_rule_decode import decode_step  # noqa: E402

DEFAULT = fused_recurrent._decode_blocks
# (BV, num_warps); None: the defaults
SETTINGS = [None, (16, 4), (64, 4), (32, 2), (32, 8), (64, 8), (16, 2), (128, 8)]


def wall_ms(step, iters: int = 50) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        step()
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3


def main() -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        fla = decode_step("fla")
        print(f"{'fla fused_recurrent_gated_delta_rule':<36} gpu {time_ms(fla, 50):.4f} ms  wall {wall_ms(fla):.4f} ms",
              flush=True)
        ours = decode_step("ours")
        for setting in SETTINGS:
            name = "defaults" if setting is None else f"BV={setting[0]} warps={setting[1]}"
            if setting is not None:
                fused_recurrent._decode_blocks = (lambda BV, nw: lambda K, V: (DEFAULT(K, V)[0], BV, nw))(*setting)
            try:
                print(f"{name:<36} gpu {time_ms(ours, 50):.4f} ms  wall {wall_ms(ours):.4f} ms", flush=True)
            except Exception as e:  # a setting that does not compile is a result, not the end
                print(f"{name:<36} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            finally:
                fused_recurrent._decode_blocks = DEFAULT


if __name__ == "__main__":
    main()
