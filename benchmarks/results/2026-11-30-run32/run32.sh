#!/usr/bin/env bash
# Run 32 (1 GPU): branch pending-decode (in-place decode steps leave each token's transition pending).
#   1. GPU tests, three processes: the pending tests and every decode test (in place now takes the
#      pending path), the cached decoding / generate test of the patched models, the launch shapes;
#   2. the decode benchmark (pytest-benchmark: ours in place, ours writing a new state, fla), alone on the GPU;
#   3. sweep_gdn_decode.py (launch shapes) and --host (host and kernel time per step).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
tst() {  # name, pytest args...
  local name=$1; shift
  TRITON_CACHE_DIR=/tmp/tc0-$name timeout 280 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
D=tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py
tst pending tests/ops/test_log_linear_gated_delta_rule_pending.py -k gpu &
tst decode $D -k "gpu_decode and not launch_shapes" &
tst models tests/patches/test_generate.py $D -k "gpu_decode_launch_shapes or gpu_cached" &
wait
export TRITON_CACHE_DIR=/tmp/tc1
BENCH_JSONL=$R/bench-decode.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider \
  benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode.json \
  > $R/bench-decode.log 2>&1; st "bench rc=$?"
timeout 60 python3 benchmarks/sweep_gdn_decode.py > $R/decode-sweep.txt 2>&1; st "sweep rc=$?"
timeout 60 python3 benchmarks/sweep_gdn_decode.py --host > $R/decode-host.txt 2>&1; st "host rc=$?"
cd $OUT && tar -czf run32.tar.gz run && rm -rf run
