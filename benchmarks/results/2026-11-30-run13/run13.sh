#!/usr/bin/env bash
# Run 13: GPU 1 (timing): launch sweep, decode benchmarks, scalar benchmark suite.
#         GPU 0 (correctness, side by side): scalar chunk tests (4 warps), decode tests, generate tests, demo (300 steps).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
bench() {  # tag, file, timeout, -k expression
  BENCH_JSONL=$R/bench-$1.jsonl timeout $3 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_$2.py \
    -k "$4" --benchmark-only --benchmark-json $R/bench-$1.json > $R/bench-$1.log 2>&1; st "bench-$1 rc=$?"
}
gpu1() {
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  timeout 90 python3 benchmarks/sweep_scalar.py 4096 > $R/sweep.txt 2>&1; st "sweep rc=$?"
  bench scalar-decode log_linear_attn 60 "decode"
  bench gdn-decode log_linear_gated_delta_rule_decode 60 "decode"
  bench scalar log_linear_attn 300 "chunk and (not fla_log_linear or 16384-fla_log_linear)"
}
tst() {  # name, timeout, pytest args...
  local name=$1 to=$2; shift 2
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout $to python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
gpu1 &
tst scalar-chunk 420 tests/ops/test_log_linear_attn_chunk.py -k "gpu or cuda or forward_only" &
tst decode 200 tests/ops/test_log_linear_attn_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu or cuda" &
tst generate 420 tests/patches/test_cpu.py tests/patches/test_generate.py -k "gpu or cuda" &
( CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-demo timeout 420 python3 -m fla_loglinear demo --no-progress --steps 300 \
  --output $R/demo > $R/demo.log 2>&1; st "demo rc=$?" ) &
wait
cd $OUT && tar -czf run13.tar.gz run && rm -rf run
