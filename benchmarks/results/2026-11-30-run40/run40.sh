#!/usr/bin/env bash
# Run 40 (1 GPU), the tree of run 39: fwd+bwd benchmark rows ours / SDPA / fla at 8K only (run 39's benchmark was
# cut by its timeout); rows go to the JSON-lines file as they finish.
set -uo pipefail
R=$OUT/run40; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; git status --short 2>/dev/null | head -20; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, fla; print('torch', torch.__version__, '| triton', triton.__version__, '| fla', fla.__version__)"; } > $R/env.txt 2>&1
BENCH_JSONL=$R/bench-gdn.jsonl timeout 150 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "fwdbwd and 8192 and (ours- or sdpa- or fla-) and not torchlocal" --benchmark-only > $R/bench-gdn.log 2>&1
echo "rc=$?" >> $R/env.txt
