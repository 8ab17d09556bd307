#!/usr/bin/env bash
# Run 18 (1 GPU): the GDN GPU tests that exercise the per-chunk gradient kernel after the fp32 fix of run 17
# (fp32: three launches without multi-buffered loads), plus bf16 checks of the restructured 16-bit launch.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
tst() {  # name, pytest -k expression
  TRITON_CACHE_DIR=/tmp/tc-$1 timeout 290 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_gated_delta_rule_chunk.py \
    -k "$2" > $R/tests-$1.log 2>&1; st "tests-$1 rc=$?"
}
tst fwdbwd-fp32 "gpu_forward_backward_vs_reference and 0.002" &
tst heads-fp32-a "gpu_head_dims_and_varlen and (dtype0 or dtype1)" &
tst heads-fp32-b "gpu_head_dims_and_varlen and (dtype4 or dtype5)" &
tst rest "gpu_continuation or gpu_layer_options or (gpu_forward_backward_vs_reference and dtype1) or (gpu_head_dims_and_varlen and dtype3)" &
wait
cd $OUT && tar -czf run18.tar.gz run && rm -rf run
