#!/usr/bin/env bash
# Run 37 (2 GPUs), main 85c3457 + uncommitted: where the sweeps have few programs, the GDN backward's scan
# stops half-way and the per-chunk gradients of the later half run beside its second half (side stream,
# after the replay).
#   GPU 0: GDN chunked-op GPU tests in three processes
#   GPU 1: sweep (split vs not) at 32K / 64K; the full GDN benchmark (fwd, fwd+bwd; ours, fla, SDPA;
#          1K-64K); the decode benchmark once more
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
tst() {  # name, pytest args...
  local name=$1; shift
  CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0-$name timeout 420 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" &
(
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  timeout 150 python3 benchmarks/sweep_gdn.py 32768 65536 --only "grads after the scan;replay then scan" \
    > $R/sweep-split.txt 2>&1; st "sweep rc=$?"
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 300 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
  BENCH_JSONL=$R/bench-decode.jsonl timeout 100 python3 -m pytest -q -p no:cacheprovider \
    benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode.json \
    > $R/bench-decode.log 2>&1; st "bench-decode rc=$?"
) &
wait
cd $OUT && tar -czf run37.tar.gz run && rm -rf run
