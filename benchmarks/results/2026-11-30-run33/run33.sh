#!/usr/bin/env bash
# Run 33 (1 GPU): branch pending-decode + (uncommitted) slot read issued before x's chain, log entries loaded one
# ahead; the decode benchmark at position 100,000 cycling the pending log's fill level.
#   1. sweep_gdn_decode.py --phases (launch shapes, mean over the log's fill levels; per level for the defaults);
#   2. the decode benchmark; 3. GPU tests of the pending and decode kernels (changed since run 32).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
timeout 150 python3 benchmarks/sweep_gdn_decode.py --phases > $R/decode-phases.txt 2>&1; st "phases rc=$?"
BENCH_JSONL=$R/bench-decode.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider \
  benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode.json \
  > $R/bench-decode.log 2>&1; st "bench rc=$?"
TRITON_CACHE_DIR=/tmp/tc2 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_gated_delta_rule_pending.py \
  tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu_pending or gpu_decode" > $R/tests-decode.log 2>&1; st "tests rc=$?"
cd $OUT && tar -czf run33.tar.gz run && rm -rf run
