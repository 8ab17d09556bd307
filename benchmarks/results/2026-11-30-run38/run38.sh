#!/usr/bin/env bash
# Run 38 (2 GPUs), the tree of run 37 (committed as is) plus one more sweep setting:
#   GPU 0: the GDN GPU test group that run 37's timeout cut (continuation, unit lambdas, layer options, fused local)
#   GPU 1: sweep at 8K-64K: side by side / split grads / split at every length / neither; fwd+bwd benchmark rows
#          ours / fla / SDPA at 8K-64K; the decode benchmark
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0 timeout 480 python3 -m pytest -q -p no:cacheprovider $G \
  -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" > $R/tests-rest.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  timeout 200 python3 benchmarks/sweep_gdn.py 8192 16384 32768 65536 \
    --only "grads after the scan;grads split at every length;replay then scan" > $R/sweep-split.txt 2>&1; st "sweep rc=$?"
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 150 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "fwdbwd and not torchlocal and (8192 or 16384 or 32768 or 65536)" --benchmark-only \
    --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
  BENCH_JSONL=$R/bench-decode.jsonl timeout 90 python3 -m pytest -q -p no:cacheprovider \
    benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode.json \
    > $R/bench-decode.log 2>&1; st "bench-decode rc=$?"
) &
wait; st "tests-rest done"
cd $OUT && tar -czf run38.tar.gz run && rm -rf run
