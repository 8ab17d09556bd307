#!/usr/bin/env bash
# Run 34 (1 GPU): branch pending-decode + (uncommitted) 2 warps for the pending decode kernel up to K = 128.
#   1. the decode benchmark; 2. sweep_gdn_decode.py --host (host and kernel time per step) and --phases;
#   3. GPU tests: pending and decode kernels, launch shapes, the patched models' cached decoding and generate.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
BENCH_JSONL=$R/bench-decode.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider \
  benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode.json \
  > $R/bench-decode.log 2>&1; st "bench rc=$?"
timeout 60 python3 benchmarks/sweep_gdn_decode.py --host > $R/decode-host.txt 2>&1; st "host rc=$?"
timeout 150 python3 benchmarks/sweep_gdn_decode.py --phases > $R/decode-phases.txt 2>&1; st "phases rc=$?"
TRITON_CACHE_DIR=/tmp/tc2 timeout 220 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_gated_delta_rule_pending.py \
  tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu_pending or gpu_decode" > $R/tests-decode.log 2>&1 &
TRITON_CACHE_DIR=/tmp/tc3 timeout 220 python3 -m pytest -q -p no:cacheprovider tests/patches/test_generate.py -k gpu \
  > $R/tests-models.log 2>&1 &
wait; st "tests done"
cd $OUT && tar -czf run34.tar.gz run && rm -rf run
