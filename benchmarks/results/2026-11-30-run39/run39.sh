#!/usr/bin/env bash
# Run 39 (2 GPUs), main 1dcf203 + uncommitted: the backward's replay and scan side by side only where each
# has at most one program per SM (run 38: one after the other is faster at 8K).
#   GPU 0: GDN GPU tests: forward/backward vs reference, many programs, million tokens
#   GPU 1: fwd+bwd benchmark rows ours / fla / SDPA at 4K-64K; sweep at 8K / 16K
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0 timeout 290 python3 -m pytest -q -p no:cacheprovider $G \
  -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" > $R/tests-fwdbwd.log 2>&1 &
(
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  BENCH_JSONL=$R/bench-gdn.jsonl timeout 170 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "fwdbwd and not torchlocal and (4096 or 8192 or 16384 or 32768 or 65536)" --benchmark-only \
    --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
  timeout 90 python3 benchmarks/sweep_gdn.py 8192 16384 --only "side by side at every length" > $R/sweep.txt 2>&1; st "sweep rc=$?"
) &
wait; st "tests done"
cd $OUT && tar -czf run39.tar.gz run && rm -rf run
