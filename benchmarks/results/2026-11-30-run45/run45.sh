#!/usr/bin/env bash
# Run 45 (1 GPU, alone), main as committed + benchmarks/do_bench_gdn.py: the SDPA backends.
# (benchmarks/do_bench_gdn.py ran from the working tree; it is committed beside this script, not in benchmarks/)
#   1. do_bench_gdn.py 4K/8K/16K/32K: fwd+bwd of ours, fla, SDPA (torch's choice, flash, cuDNN), do_bench vs synced
#   2. the full GDN benchmark (all SDPA rows), nothing else running
#   3. profile_ops gdn 8192 (the kernels of ours at the first SDPA target length)
#   4. the scalar benchmark without fla's log-linear op, if time remains
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks TRITON_CACHE_DIR=/tmp/tc1
{ date -u; echo "tree: main $(git rev-parse --short HEAD 2>/dev/null) + do_bench_gdn.py"; md5sum fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
st start
timeout 150 python3 benchmarks/do_bench_gdn.py 4096 8192 16384 32768 > $R/do_bench.txt 2>&1; st "do_bench rc=$?"
BENCH_JSONL=$R/bench-gdn.jsonl timeout 300 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "not torchlocal" --benchmark-only --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench-gdn rc=$?"
timeout 60 python3 benchmarks/profile_ops.py gdn 8192 > $R/profile-gdn.txt 2>&1; st "profile rc=$?"
BENCH_JSONL=$R/bench-scalar.jsonl timeout 100 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_attn.py \
  -k "not fla_log_linear" --benchmark-only --benchmark-json $R/bench-scalar.json > $R/bench-scalar.log 2>&1; st "bench-scalar rc=$?"
cd $OUT && tar -czf run45.tar.gz run && rm -rf run
