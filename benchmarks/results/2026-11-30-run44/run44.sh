#!/usr/bin/env bash
# Run 44 (1 GPU), main fab3680 as committed: a second same-run measurement of fwd+bwd ours / fla at 32K and
# 64K with nothing else on the machine; ours fwd and fwd+bwd at 16K (run 43's 16K fwd row was 7.98 ms
# against run 42's 4.83 on the same code path).
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; echo "tree: main fab3680"; md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
BENCH_JSONL=$R/bench-gdn.jsonl timeout 300 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "not torchlocal and ((fwdbwd and (32768 or 65536) and (ours or fla)) or 16384-ours)" --benchmark-only \
  --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1
echo "bench rc=$? $(date -u +%H:%M:%S)" >> $R/env.txt
cd $OUT && tar -czf run44.tar.gz run && rm -rf run
