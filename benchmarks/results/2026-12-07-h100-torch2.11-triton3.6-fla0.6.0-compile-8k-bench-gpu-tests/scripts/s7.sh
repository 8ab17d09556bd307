#!/usr/bin/env bash
# session 6 call 2: every CUDA test group on the final tree, side by side (the GDN chunked group in shards)
set -uo pipefail
BUDGET_S=${BUDGET_S:-560}
. .devrun/common.sh
export TT=$(( BUDGET_S - ($(date +%s) - T0) - 40 ))
SC=tests/ops/test_log_linear_attn_chunk.py; GC=tests/ops/test_log_linear_gated_delta_rule_chunk.py
GR="tests/ops/test_log_linear_attn_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_pending.py tests/ops/test_aligned_chunks.py"
. .devrun/shard.sh gdn 6 "$GC" "gpu or cuda or forward_only" &
. .devrun/shard.sh scalar 2 "$SC" "gpu or cuda or forward_only" &
. .devrun/shard.sh rest 7 "$GR tests/test_levels.py tests/patches/test_cpu.py tests/patches/test_generate.py tests/patches/test_models.py tests/layers tests/training/test_compile.py tests/ops/test_library.py" "gpu or cuda or triton or sync" &
wait
for f in $R/tests-*.log; do echo "== $f: $(tail -n 1 $f)"; done | tee -a $R/summary.txt
grep -h -E "^(FAILED|ERROR)" $R/tests-*.log | head -20
pack
