#!/usr/bin/env bash
# Run 12: GPU 1 (timing): decode benchmarks (scalar, GDN), then the scalar launch-settings sweep.
#         GPU 0 (correctness, side by side): decode tests, GDN default-path tests, generate + model tests, demo.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log -1 --format="commit: %H %s" 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
gpu1() {
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  for b in log_linear_attn:decode log_linear_gated_delta_rule_decode:; do
    f=${b%%:*}; sel=${b#*:}
    BENCH_JSONL=$R/bench-$f.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_$f.py \
      ${sel:+-k $sel} --benchmark-only --benchmark-json $R/bench-$f.json > $R/bench-$f.log 2>&1; st "bench-$f rc=$?"
  done
  timeout 300 python3 benchmarks/sweep_scalar.py 4096 > $R/sweep.txt 2>&1; st "sweep rc=$?"
}
tst() {  # name, timeout, pytest args...
  local name=$1 to=$2; shift 2
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout $to python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
gpu1 &
tst decode 420 tests/ops/test_log_linear_attn_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu or cuda" &
tst gdn 480 tests/ops/test_log_linear_gated_delta_rule_chunk.py -k "(gpu or cuda) and not triton and not fused_local and not million" &
tst models 480 tests/patches/test_cpu.py tests/patches/test_generate.py tests/patches/test_models.py tests/layers -k "gpu or cuda" &
( CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-demo timeout 480 python3 -m fla_loglinear demo --no-progress --output $R/demo \
  > $R/demo.log 2>&1; st "demo rc=$?" ) &
wait
cd $OUT && tar -czf run12.tar.gz run && rm -rf run
