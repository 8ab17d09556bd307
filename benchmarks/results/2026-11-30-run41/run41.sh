#!/usr/bin/env bash
# Run 41 (2 GPUs): main 69a1b79 with exp/64k-both's files copied over (.variants/exp41: segmented forward,
# LATE_QUARTERS), i.e. exp/64k-both a8bb374 + one more sweep setting.
#   GPU 0: GDN chunked-op GPU tests on that tree, three processes
#   GPU 1: sweep at 32K / 64K (segmented forward off / 16 / 32 / 128 chunks, late quarter / three quarters);
#          fwd+bwd benchmark rows ours / fla / SDPA at 8K, 32K, 64K (the exp tree's defaults)
set -uo pipefail
R=$OUT/run; mkdir -p $R
cp -r .variants/exp41/. . || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; echo "tree: main 69a1b79 + .variants/exp41 (exp/64k-both a8bb374 + sweep setting 'segments of 16 chunks')"
  md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
tst() {  # name, pytest args...
  local name=$1; shift
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout 420 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
st start
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" &
(
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  timeout 240 python3 benchmarks/sweep_gdn.py 32768 65536 --only "no segmented forward;segments of 16 chunks;segments of 32 chunks;segments of 128 chunks;late quarter;late three quarters" \
    > $R/sweep.txt 2>&1; st "sweep rc=$?"
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 260 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "fwdbwd and not torchlocal and (8192 or 32768 or 65536)" --benchmark-only \
    --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
) &
wait; st done
cd $OUT && tar -czf run41.tar.gz run && rm -rf run
