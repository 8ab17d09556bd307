#!/usr/bin/env bash
# Run 49 (1 GPU, alone), main 76bb687 + sweep settings: the segmented forward at 8K / 16K (many programs)
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla; print('torch', torch.__version__, '| triton', triton.__version__, '| fla', fla.__version__)"; } > $R/env.txt 2>&1
P="segmented forward at every length;segmented forward at every length, 64 chunks;segmented forward at every length, 8 chunks"
timeout 170 python3 benchmarks/sweep_gdn.py 8192 16384 --only "$P;defaults;$P" > $R/sweep.txt 2>&1; echo "sweep rc=$? $(date -u +%T)" >> $R/env.txt
cd $OUT && tar -czf run49.tar.gz run && rm -rf run
