#!/usr/bin/env bash
# Run 42 (2 GPUs): main 69a1b79 with exp/seg-main's files copied over (.variants/exp42: segmented forward,
# segments of 16 chunks, the sequential chain on a stream of the highest priority beside the side stream).
#   GPU 0: GDN chunked-op GPU tests on that tree, three processes; the fwd+bwd group again if the sweep
#          changes a setting
#   GPU 1: sweep at 32K / 64K, two passes (segments of 8-64 chunks, none, no lead priority); pick42.py
#          writes the winners into chunk_inter.py; then the full GDN benchmark (fwd, fwd+bwd, 1K-64K)
set -uo pipefail
R=$OUT/run; mkdir -p $R
cp -r .variants/exp42/. . || exit 1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
F=fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
{ date -u; echo "tree: main 69a1b79 + .variants/exp42 (exp/seg-main)"; md5sum $F
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
  P="no lead priority;no segmented forward;segments of 8 chunks;segments of 12 chunks;segments of 16 chunks;segments of 24 chunks;segments of 32 chunks;segments of 64 chunks"
  timeout 240 python3 benchmarks/sweep_gdn.py 32768 65536 --only "$P;$P" > $R/sweep.txt 2>&1; st "sweep rc=$?"
  cp $F $R/chunk_inter.before.py
  python3 .variants/pick42.py $R/sweep.txt > $R/pick.txt 2>&1; st "pick rc=$?"
  md5sum $F >> $R/pick.txt
  if ! cmp -s $F $R/chunk_inter.before.py; then
    diff $R/chunk_inter.before.py $F >> $R/pick.txt
    tst fwdbwd-final $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs" &
  fi
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 330 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
  wait
) &
wait; st done
cd $OUT && tar -czf run42.tar.gz run && rm -rf run
