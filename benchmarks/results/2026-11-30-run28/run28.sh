#!/usr/bin/env bash
# Run 28 (1 GPU, two calls: run28.sh sweep, run28.sh tests): branch exp/slot-pairs (c2230ee, main 56cf508 + the pair
# kernels, PAIRS off by default) plus, uncommitted, the decode kernel's one-slot-ahead loads (PREFETCH, off) and a
# cached _decode_blocks.
#   tests: every GDN GPU test, the first run with slow-decay inputs (gates / 50, beta / 10), three processes.
#   sweep: sweep defaults / pairs / pairs warps=8 at 16K-64K, test_gpu_slot_pairs (bf16 / fp16, T = 8192), the
#          decode sweep (launch shapes x prefetch) and the decode GPU tests (prefetch included).
set -uo pipefail
MODE=$1; R=$OUT/run-$MODE; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
gpu1() {
  export TRITON_CACHE_DIR=/tmp/tc1
  timeout 200 python3 benchmarks/sweep_gdn.py 16384 32768 65536 --only "pairs;pairs warps=8" \
    > $R/sweep-pairs.txt 2>&1; st "sweep rc=$?"
  timeout 150 python3 -m pytest -q -p no:cacheprovider $G -k "gpu_slot_pairs" > $R/tests-pairs.log 2>&1; st "tests-pairs rc=$?"
  timeout 90 python3 benchmarks/sweep_gdn_decode.py > $R/sweep-decode.txt 2>&1; st "sweep-decode rc=$?"
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py \
    -k "gpu_decode and not launch_shapes" > $R/tests-decode.log 2>&1; st "tests-decode rc=$?"
}
tst() {  # name, pytest args...
  local name=$1; shift
  TRITON_CACHE_DIR=/tmp/tc0-$name timeout 430 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
if [ "$MODE" = sweep ]; then gpu1 > $R/gpu1.out 2>&1; else
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_fused_local" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_decode_launch" tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py &
wait; fi
cd $OUT && tar -czf run28-$MODE.tar.gz run-$MODE && rm -rf run-$MODE
