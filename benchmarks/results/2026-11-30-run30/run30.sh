#!/usr/bin/env bash
# Run 30 (1 GPU): branch exp/replay-pieces, uncommitted: the forward keeps the live slots at every SEG-th chunk
# (snapshots) when the sweeps have few programs, and the backward's replay runs the pieces between them side by
# side (REPLAY_PROGRAMS_PER_SM = 4).
#   1. sweep: pieces off / 2 / 8 per SM against the default 4, fwd+bwd at 32K and 64K (alone on the GPU)
#   2. benchmark rows ours / fla, fwd+bwd, 8K-64K (alone on the GPU)
#   3. GDN GPU tests of the chunked op (decode untouched since run 29) in three processes
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
export TRITON_CACHE_DIR=/tmp/tc1
timeout 130 python3 benchmarks/sweep_gdn.py 32768 65536 --only "replay pieces off;replay 2 per SM;replay 8 per SM" \
  > $R/sweep-replay.txt 2>&1; st "sweep rc=$?"
BENCH_JSONL=$R/bench-gdn.jsonl timeout 120 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule.py \
  -k "fwdbwd and (ours- or fla-) and not torchlocal and (8192 or 16384 or 32768 or 65536)" --benchmark-only \
  --benchmark-json $R/bench-gdn.json > $R/bench-gdn.log 2>&1; st "bench rc=$?"
tst() {  # name, pytest args...
  local name=$1; shift
  TRITON_CACHE_DIR=/tmp/tc0-$name timeout 300 python3 -m pytest -q -p no:cacheprovider "$@" \
    > $R/tests-$name.log 2>&1; st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million" &
tst heads $G -k "gpu_head_dims_and_varlen or gpu_replay_in_pieces" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" &
wait
cd $OUT && tar -czf run30.tar.gz run && rm -rf run
