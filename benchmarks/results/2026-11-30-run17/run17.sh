#!/usr/bin/env bash
# Run 17 (branch exp/gdn-bwd: fla l2norm, GDN backward split into a sequential slot-gradient scan + a parallel
# per-chunk gradient kernel, replay without output).
#   GPU 1 (timing): GDN decode benchmark, GDN fwd+bwd benchmark (all T), kernel profile 4K / 64K.
#   GPU 0 (correctness): three pytest processes side by side over the GDN GPU tests, plus the decode GPU tests.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
bench() {  # tag, file, timeout, -k expression
  BENCH_JSONL=$R/bench-$1.jsonl timeout $3 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_$2.py \
    -k "$4" --benchmark-only --benchmark-json $R/bench-$1.json > $R/bench-$1.log 2>&1; st "bench-$1 rc=$?"
}
gpu1() {
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  bench gdn-decode log_linear_gated_delta_rule_decode 60 "decode"
  bench gdn log_linear_gated_delta_rule 400 "not torchlocal"
  timeout 100 python3 benchmarks/profile_ops.py gdn 4096 65536 > $R/profile-ops-gdn.txt 2>&1; st "profile rc=$?"
}
tst() {  # name, timeout, pytest args...
  local name=$1 to=$2; shift 2
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout $to python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
gpu1 > $R/gpu1.out 2>&1 &
tst gdn-fwdbwd 540 $G -k "gpu_forward_backward_vs_reference" &
tst gdn-heads 540 $G -k "gpu_head_dims_and_varlen" &
tst gdn-rest 540 $G tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py \
  -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_million or gpu_decode" &
wait
cd $OUT && tar -czf run17.tar.gz run && rm -rf run
