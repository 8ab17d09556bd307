#!/usr/bin/env bash
# Nsight Compute on the Gated DeltaNet kernels that bound the speed targets (device tool, fla wheels in .whl/):
#   bash benchmarks/ncu_gdn.sh
# 1. the sweeps at 64K (the output sweep, its replay, the slot-gradient scan): which unit is at its limit
#    (results runs 24-30 found them bound by the SM's throughput, not by their chain of chunks);
# 2. the decode kernel at the decode benchmark's shape: its DRAM throughput against the 4.3 TB/s a
#    device-to-device copy reaches there (KINDS.md).
# ncu needs the Firecracker runtime (KINDS.md; on gVisor it cannot read the counters): the first lines of
# ncu-check.txt say whether it could.  First run: results run 31.
set -uo pipefail
OUT=${OUT:-benchmarks/out}
R=$OUT/run
mkdir -p "$R"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-cache
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; which ncu; ncu --version; } > "$R/ncu-check.txt" 2>&1
# --clock-control none: METHOD.md says to leave the clocks alone
NCU="ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section Occupancy --section LaunchStats --section WarpStateStats"
# four fwd+bwd steps of the benchmark shape (not profile_ops.py's main: its torch.profiler and ncu would both
# take the profiling interface); each step launches the two forward sweeps and the scan, so skip three steps
timeout 300 $NCU --kernel-name regex:"chunk_inter_(fwd|bwd)_kernel" --launch-skip 9 --launch-count 3 \
  python3 -c "import sys, torch; sys.path.insert(0, 'benchmarks'); from profile_ops import make_step
step = make_step('gdn', 65536)
for _ in range(4): step()
torch.cuda.synchronize()" > "$R/ncu-sweeps.txt" 2>&1
echo "sweeps rc=$?" >> "$R/summary.txt"
# the decode sweep times fla's step first, then ours with CUDA events: the 21st launch of ours is in that timing
timeout 200 $NCU --kernel-name regex:"fused_recurrent_fwd_kernel" --launch-skip 20 --launch-count 1 \
  python3 benchmarks/dev/sweep_gdn_decode.py > "$R/ncu-decode.txt" 2>&1
echo "decode rc=$?" >> "$R/summary.txt"
(cd "$OUT" && tar -czf ncu.tar.gz run && rm -rf run)
