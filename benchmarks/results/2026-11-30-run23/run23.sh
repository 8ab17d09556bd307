#!/usr/bin/env bash
# Run 23 (2 GPUs): the chunk-local GDN backward on 4 warps (BWD_NUM_WARPS), uncommitted on top of 41779b8.

#   GPU 1: GDN benchmark (all T, alone on its GPU), then the kernel profile at 4K / 64K.

#   GPU 0: every GDN GPU test (decode included) in three processes.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
gpu1() {
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 320 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
  timeout 40 python3 benchmarks/profile_ops.py gdn 4096 65536 > $R/profile-ops-gdn.txt 2>&1; st "profile rc=$?"
}
tst() {  # name, pytest args...
  local name=$1; shift
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout 400 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
gpu1 > $R/gpu1.out 2>&1 &
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_fused_local" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_decode" tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py &
wait
cd $OUT && tar -czf run23.tar.gz run && rm -rf run
