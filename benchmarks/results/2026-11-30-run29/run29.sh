#!/usr/bin/env bash
# Run 29 (1 GPU): main 56cf508 plus, uncommitted, a cached _decode_blocks and the grid in plain integers (host
# time of a decode step), and sweep_gdn_decode.py --host.
#   First the decode host profile (fla and ours, alone on the GPU), then every GDN GPU test in three processes:
#   the first run of the forward / backward, head-dim / varlen and continuation tests with slow-decay inputs.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
TRITON_CACHE_DIR=/tmp/tc1 timeout 60 python3 benchmarks/sweep_gdn_decode.py --host > $R/decode-host.txt 2>&1; st "decode-host rc=$?"
tst() {  # name, pytest args...
  local name=$1; shift
  TRITON_CACHE_DIR=/tmp/tc0-$name timeout 440 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_fused_local" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_decode" tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py &
wait
cd $OUT && tar -czf run29.tar.gz run && rm -rf run
