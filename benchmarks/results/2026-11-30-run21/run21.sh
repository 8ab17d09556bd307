#!/usr/bin/env bash
# Run 21 (1 GPU): the sweeps' 16-wide V blocks now only below one program of 32 columns per SM (16K and longer at
# the benchmark shape; run 20 took them at 8K too).  Sweep of both widths at 8K / 16K, then the GDN benchmark (all T)
# alone on the GPU (run 20's ran beside the tests).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
timeout 150 python3 -c "
import sys; sys.path.insert(0, 'benchmarks'); sys.argv[0] = 'benchmarks/sweep_gdn.py'
import sweep_gdn as s
s.SETTINGS = {k: v for k, v in s.SETTINGS.items() if k in ('defaults', 'scans BV=16 warps=4', 'scans BV=32 warps=4')}
s.main([8192, 16384])" > $R/sweep-gdn.txt 2>&1; st "sweep rc=$?"
BENCH_JSONL=$R/bench-gdn.jsonl timeout 400 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
cd $OUT && tar -czf run21.tar.gz run && rm -rf run
