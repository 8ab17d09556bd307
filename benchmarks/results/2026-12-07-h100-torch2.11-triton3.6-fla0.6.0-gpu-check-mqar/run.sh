#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/tc TRITON_CACHE_AUTOTUNING=1
R=$OUT/r; mkdir -p $R
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
( OUT=$R BENCHES="" TEST_TIMEOUT=380 bash benchmarks/dev/gpu_check.sh > $R/gpu-check.out 2>&1 ) &
( timeout 380 python3 -m pytest -q -p no:cacheprovider tests/training/test_compile.py tests/ops/test_library.py -k "cuda or gpu" > $R/tests-compile-cuda.log 2>&1; echo "compile rc=$?" >> $R/compile-rc.txt ) &
timeout 360 python3 -m fla_loglinear mqar --vocab-size 256 --widths 64,128 --steps 800 --seeds 0,1 --seed-widths 64 --form-widths 64 --workers 10 --deadline-s 300 --output $OUT/mqar.json > $R/mqar.log 2>&1
echo "mqar rc=$?" >> $R/compile-rc.txt
wait
date -u >> $R/env.txt
BENCH_JSONL=$R/bench-gdn.jsonl timeout 80 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py --benchmark-only -k "fwdbwd and (4096 or 16384) and (ours or fla) and not torchlocal" > $R/bench-gdn.log 2>&1
BENCH_JSONL=$R/bench-scalar.jsonl timeout 70 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_attn.py --benchmark-only -k "test_bench_chunk and fwdbwd and (4096 or 16384) and (ours or simple_gla)" > $R/bench-scalar.log 2>&1
date -u >> $R/env.txt
tar czf $OUT/run.tar.gz -C $OUT r
cat $R/gpu-check/summary.txt $R/compile-rc.txt; tail -3 $R/tests-compile-cuda.log; tail -4 $R/bench-gdn.log $R/bench-scalar.log; tail -25 $R/mqar.log
