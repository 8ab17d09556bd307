#!/usr/bin/env bash
# Run 47 (1 GPU, alone), main b46209d + the new sweep settings (benchmarks/sweep_gdn.py):
#   1. GDN benchmark fwd+bwd at 32K / 64K, ours and fla, two processes one after the other
#   2. sweep at 8K / 16K: 64-wide sweep blocks, alone or with the replay beside the scan
#   3. the scalar benchmark fwd+bwd at 4K-16K with the three SDPA rows (no fla log-linear op)
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc1
{ date -u; md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
st start
for i in 1 2; do
  BENCH_JSONL=$R/bench-gdn-64k.jsonl timeout 110 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
    -k "not torchlocal and fwdbwd and (32768 or 65536) and (ours or fla)" --benchmark-only > $R/bench-gdn-64k-$i.log 2>&1; st "bench-gdn-64k $i rc=$?"
done
P="scans BV=64 warps=4;scans BV=64 warps=8;side by side BV=64;side by side BV=64 warps=8;side by side BV=64 split grads;side by side at every length"
timeout 140 python3 benchmarks/sweep_gdn.py 8192 16384 --only "$P;defaults" > $R/sweep.txt 2>&1; st "sweep rc=$?"
BENCH_JSONL=$R/bench-scalar.jsonl timeout 200 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_attn.py \
  -k "test_bench_chunk and fwdbwd and (4096 or 8192 or 16384) and not fla_log_linear" --benchmark-only > $R/bench-scalar.log 2>&1; st "bench-scalar rc=$?"
cd $OUT && tar -czf run47.tar.gz run && rm -rf run
