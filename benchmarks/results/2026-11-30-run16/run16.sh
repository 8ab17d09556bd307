#!/usr/bin/env bash
# Run 16: GPU 1 (timing): decode kernel/wall profile and benchmark for S (slot-parallel step kernel, 8 programs),
#         Q (same tree, token-loop kernel), S4 / S16 (4 / 16 programs); then the GDN fwd+bwd benchmark (fla l2norm).
#         GPU 0 (correctness): GDN decode tests (step + loop), generate tests, GDN chunk tests touching the l2norm change.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH=/tmp/site python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
mkdir -p /tmp/var && tar -xf .variants/dec16.tar -C /tmp/var
gpu1() {
  export CUDA_VISIBLE_DEVICES=1
  for v in S Q S4 S16; do
    d=/tmp/var/$v; cp -r benchmarks tests $d/
    ( cd $d && export PYTHONPATH=$d:/tmp/site TRITON_CACHE_DIR=/tmp/tc-$v
      if [ $v = S ] || [ $v = Q ]; then timeout 90 python3 $OLDPWD/.variants/dec_prof.py $v >> $R/dec-prof.txt 2>&1; st "prof-$v rc=$?"; fi
      BENCH_JSONL=$R/dec-$v.jsonl timeout 60 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule_decode.py \
        --benchmark-only --benchmark-json $R/dec-$v.json > $R/dec-$v.log 2>&1; st "dec-$v rc=$?" )
  done
  export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 300 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
}
tst() {  # name, timeout, pytest args...
  local name=$1 to=$2; shift 2
  CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc0-$name timeout $to python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
gpu1 > $R/gpu1.out 2>&1 &
tst decode 200 tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu or cuda" &
tst generate 420 tests/patches/test_generate.py -k "gpu or cuda" &
tst gdn 480 tests/ops/test_log_linear_gated_delta_rule_chunk.py -k "layer_options_vs_cpu or unit_lambdas or forward_backward_vs_reference" &
wait
cd $OUT && tar -czf run16.tar.gz run && rm -rf run
