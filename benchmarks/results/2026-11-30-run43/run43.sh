#!/usr/bin/env bash
# Run 43 (2 GPUs): main 69a1b79 with exp/seg-main 8df6dc9's files copied over (.variants/exp43: segmented
# forward in segments of 24 chunks, lead stream priority, GRADS_BV knob).
#   GPU 1: sweep at 32K / 64K, three passes (no lead priority, grads BV=64 / 128, segments of 32 chunks);
#          pick43.py writes the winners into chunk_inter.py; then the full GDN benchmark
#   GPU 0, after the pick: the GDN chunked-op GPU tests on the final tree, three processes
set -uo pipefail
R=$OUT/run; mkdir -p $R
cp -r .variants/exp43/. . || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
F=fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
{ date -u; echo "tree: main 69a1b79 + .variants/exp43 (exp/seg-main 8df6dc9)"; md5sum $F
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
export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
P="no lead priority;grads BV=64;grads BV=128;segments of 32 chunks;defaults"
timeout 200 python3 benchmarks/sweep_gdn.py 32768 65536 --only "$P;$P;$P" > $R/sweep.txt 2>&1; st "sweep rc=$?"
cp $F $R/chunk_inter.before.py
python3 .variants/pick43.py $R/sweep.txt > $R/pick.txt 2>&1; st "pick rc=$?"
md5sum $F >> $R/pick.txt; diff $R/chunk_inter.before.py $F >> $R/pick.txt
cp $F $R/chunk_inter.final.py
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" &
BENCH_JSONL=$R/bench-gdn.jsonl timeout 330 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
wait; st done
cd $OUT && tar -czf run43.tar.gz run && rm -rf run
