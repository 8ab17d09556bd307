#!/usr/bin/env bash
# One device run on the GPU machine: `bash benchmarks/gpu_run.sh tests|bench|all`.
# Expects fla's wheels in .whl/ (see ../shared/gpu/prepare-wheels.sh) and $OUT from the device tool.
set -uo pipefail
mode=${1:-all}
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-cache
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/env.txt"
rc=0
if [[ $mode == tests || $mode == all ]]; then
  timeout ${TEST_TIMEOUT:-420} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/ops} 2>&1 | tee "$OUT/gpu-tests.log" || rc=1
fi
if [[ $mode == bench || $mode == all ]]; then
  timeout ${BENCH_TIMEOUT:-480} python3 -m pytest -q benchmarks ${BENCH_K:+-k "$BENCH_K"} --benchmark-only \
    --benchmark-json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" || rc=1
  python3 benchmarks/plot.py "$OUT/bench.json" "$OUT" 2>&1 | tee -a "$OUT/bench.log"
fi
exit $rc
