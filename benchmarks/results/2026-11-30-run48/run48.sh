#!/usr/bin/env bash
# Run 48 (1 GPU, alone), main b46209d + sweep settings: launch settings at 8K and 64K that change which
# kernels fit an SM together (registers: tests/ops/sm90.py gdn-scan-resources)
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla; print('torch', torch.__version__, '| triton', triton.__version__, '| fla', fla.__version__)"; } > $R/env.txt 2>&1
P="scans BV=16 warps=4;prefetch BV=32 too;grads warps=4;local bwd warps=8;grads stages=1"
timeout 200 python3 benchmarks/sweep_gdn.py 8192 65536 --only "$P;defaults" > $R/sweep.txt 2>&1; echo "sweep rc=$? $(date -u +%T)" >> $R/env.txt
cd $OUT && tar -czf run48.tar.gz run && rm -rf run
