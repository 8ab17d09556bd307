#!/usr/bin/env bash
# session 6 call 1 (issue 21 / 22): 125M Gated DeltaNet at 8K compiled per block (the training op that carries
# its residuals), then the op benchmarks at 4K / 16K / 64K (fwd+bwd, ours vs fla) on a quiet GPU
set -uo pipefail
BUDGET_S=${BUDGET_S:-560}
. .devrun/common.sh
stage train-gdn-8k-compiled 210 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --compile --output $R/train-gdn-8k-compiled
cat $R/train-gdn-8k-compiled/train.md 2>/dev/null; tail -n 5 $R/train-gdn-8k-compiled.log
stage kernels $(( BUDGET_S - ($(date +%s) - T0) - 25 )) python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --bench-jsonl $R/kernels.jsonl \
  --benchmark-json=$R/kernels.json -k "fwdbwd and (4096 or 16384 or 65536) and not sdpa and not fla_log_linear and not torchlocal and not decode"
grep -E "passed|failed|error" $R/kernels.log | tail -2; cat $R/kernels.jsonl 2>/dev/null | cut -c1-200
pack
