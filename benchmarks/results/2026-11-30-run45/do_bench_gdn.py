"""Cross-check of the GDN benchmark's timing against anchors.md's method (CUDA only).

anchors.md timed SDPA and fla with ``triton.testing.do_bench`` (CUDA events over many back-to-back calls,
L2 flushed between them); the pytest benchmark times five host-synchronised rounds.  This prints
forward+backward medians of the same rows (ours, fla, the SDPA backends of ``sdpa.py``) both ways in one
process, so a gap between our SDPA rows and the anchor's can be put down to method or to backend:

    python benchmarks/do_bench_gdn.py 8192 16384
"""
from __future__ import annotations

import sys
import time

import torch
from sdpa import SDPA_OPS, backend_used
from test_bench_log_linear_gated_delta_rule import make_fn, make_inputs
from triton.testing import do_bench


def synced_rounds(step, rounds: int = 5) -> float:
    """Median ms of host-timed, synchronised calls: the pytest benchmark's method."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def main(lengths: list[int]) -> None:
    print(f"{'T':>6} {'impl':<12} {'backend':<18} {'do_bench':>9} {'synced':>9}  (fwd+bwd ms)")
    for T in lengths:
        for impl in ("ours", "fla", *SDPA_OPS):
            inputs = make_inputs(impl, T)
            try:
                backend = backend_used(impl, *inputs) if impl in SDPA_OPS else "-"
            except BaseException as e:  # a forced backend torch cannot run (pytest.skip outside pytest)
                print(f"{T:>6} {impl:<12} skipped: {str(e)[:80]}")
                continue
            fn = make_fn(impl)
            do = torch.randn_like(fn(*inputs))
            step = lambda: fn(*inputs).backward(do)
            step()
            torch.cuda.synchronize()
            ms = do_bench(step, grad_to_none=inputs, return_mode="median")
            print(f"{T:>6} {impl:<12} {backend:<18} {ms:9.3f} {synced_rounds(step):9.3f}", flush=True)
            del inputs, do
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [8192, 16384])
