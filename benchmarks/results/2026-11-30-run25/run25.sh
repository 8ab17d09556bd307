#!/usr/bin/env bash
# Run 25 (2 GPUs): the slot sweeps load one slot ahead (K = 128, 16-wide V blocks); the chunk-local output and the
# dq / dk / dv in the input dtype (no casts); no zero-filled final-state gradient.  Uncommitted on top of ac2cd75.
#   GPU 1: GDN benchmark (all T, alone on its GPU), kernel profile 4K / 64K, then a sweep: prefetch off / on at 32-wide blocks.
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
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 300 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
  timeout 40 python3 benchmarks/profile_ops.py gdn 4096 65536 > $R/profile-ops-gdn.txt 2>&1; st "profile rc=$?"
  timeout 170 python3 benchmarks/sweep_gdn.py 4096 16384 65536 --only "no prefetch;prefetch BV=32 too" \
    > $R/sweep-prefetch.txt 2>&1; st "sweep rc=$?"
}
tst() {  # name, pytest args...
  local name=$1; shift
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout 420 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
gpu1 > $R/gpu1.out 2>&1 &
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_fused_local" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_decode" tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py &
wait
cd $OUT && tar -czf run25.tar.gz run && rm -rf run
