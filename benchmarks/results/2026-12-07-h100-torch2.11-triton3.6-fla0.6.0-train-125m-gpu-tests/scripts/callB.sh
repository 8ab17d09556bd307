#!/usr/bin/env bash
# session 5 final call, on the final kernels: quiet op benchmarks (fwd+bwd at 4K/16K/64K vs fla), the 125M
# Gated DeltaNet step at 8K eager with the profile, then every GPU test group side by side (GDN chunked in shards)
set -uo pipefail
BUDGET_S=${BUDGET_S:-545}
. .devrun/common.sh
stage kernels 165 python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --bench-jsonl $R/kernels.jsonl \
  --benchmark-json=$R/kernels.json -k "fwdbwd and (4096 or 16384 or 65536) and not sdpa and not fla_log_linear and not torchlocal and not decode"
grep -E "passed|failed|error" $R/kernels.log | tail -2
stage train-gdn-8k 110 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --profile --output $R/train-gdn-8k
cat $R/train-gdn-8k/train.md 2>/dev/null
export TT=$(( BUDGET_S - ($(date +%s) - T0) - 15 ))
SC=tests/ops/test_log_linear_attn_chunk.py; GC=tests/ops/test_log_linear_gated_delta_rule_chunk.py
GR="tests/ops/test_log_linear_attn_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py tests/ops/test_log_linear_gated_delta_rule_pending.py"
. .devrun/shard.sh gdn 6 "$GC" "gpu or cuda or forward_only" &
. .devrun/shard.sh scalar 2 "$SC" "gpu or cuda or forward_only" &
. .devrun/shard.sh rest 2 "$GR tests/test_levels.py tests/patches/test_cpu.py tests/patches/test_generate.py tests/patches/test_models.py tests/layers tests/training/test_compile.py tests/ops/test_library.py" "gpu or cuda or triton" &
wait
for f in $R/tests-*.log; do echo "== $f: $(tail -n 1 $f)"; done | tee -a $R/summary.txt
grep -h -E "^(FAILED|ERROR)" $R/tests-*.log | head -20
pack
