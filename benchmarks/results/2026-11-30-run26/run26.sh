#!/usr/bin/env bash
# Run 26 (1 GPU): launch shapes of the GDN decode kernel (_decode_blocks): their GPU tests, the sweep, the decode
# benchmark with the defaults.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
D=tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py
timeout 200 python3 -m pytest -q -p no:cacheprovider $D -k "gpu_decode" > $R/tests-decode.log 2>&1; st "tests-decode rc=$?"
timeout 100 python3 benchmarks/sweep_gdn_decode.py > $R/sweep-decode.txt 2>&1; st "sweep rc=$?"
BENCH_JSONL=$R/bench-decode.jsonl timeout 100 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule_decode.py \
  --benchmark-only --benchmark-json $R/bench-decode.json > $R/bench-decode.log 2>&1; st "bench-decode rc=$?"
cd $OUT && tar -czf run26.tar.gz run && rm -rf run
