#!/usr/bin/env bash
# Run 35 (1 GPU): main 0a419ed: the decode benchmark again (a second measurement of the 1.92x of run 34).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
for i in 1 2; do
  BENCH_JSONL=$R/bench-decode-$i.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider \
    benchmarks/test_bench_log_linear_gated_delta_rule_decode.py --benchmark-only --benchmark-json $R/bench-decode-$i.json \
    > $R/bench-decode-$i.log 2>&1; st "bench $i rc=$?"
done
cd $OUT && tar -czf run35.tar.gz run && rm -rf run
