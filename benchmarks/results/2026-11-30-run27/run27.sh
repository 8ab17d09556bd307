#!/usr/bin/env bash
# Run 27 (1 GPU): 8-wide V blocks for the GDN sweeps (16-bit): fwd+bwd at 32K / 64K against the defaults, and the
# bf16 / fp16 GPU tests with them forced.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc
{ date -u; git status --short 2>/dev/null | head -20
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
timeout 100 python3 benchmarks/sweep_gdn.py 32768 65536 --only "scans BV=8 warps=4" > $R/sweep-bv8.txt 2>&1; st "sweep rc=$?"
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_gated_delta_rule_chunk.py -k "gpu_slot_scan_with_8_wide" \
  > $R/tests-bv8.log 2>&1; st "tests rc=$?"
cd $OUT && tar -czf run27.tar.gz run && rm -rf run
