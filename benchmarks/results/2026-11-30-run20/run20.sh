#!/usr/bin/env bash
# Run 20 (2 GPUs): the GDN op after run 19 — sweeps' V blocks by program count and 4 warps at K = 128, the output
# written once by the forward sweep (o_intra added in the kernel, token rows), the cached sync-free chunk layout.
#   GPU 1 (timing): GDN benchmark (all T), host-side profile at 4K, kernel profile at 4K / 64K.
#   GPU 0 (correctness): the GDN GPU tests in four processes side by side, and the model-level GPU tests.
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
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 330 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
  timeout 80 python3 benchmarks/profile_ops.py gdn 4096 65536 > $R/profile-ops-gdn.txt 2>&1; st "profile rc=$?"
  timeout 90 python3 benchmarks/profile_ops.py gdn 4096 --host > $R/host-gdn.txt 2>&1; st "host rc=$?"
}
tst() {  # name, pytest args...
  local name=$1; shift
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout 540 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
gpu1 > $R/gpu1.out 2>&1 &
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_fused_local" &
tst models tests/patches/test_models.py tests/layers -k "gpu or cuda" &
tst million $G -k "gpu_million" &
tst rest $G tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py \
  -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_decode" &
wait
cd $OUT && tar -czf run20.tar.gz run && rm -rf run
