#!/usr/bin/env bash
# The GPU evidence for a change that moves kernels (issue 22): the CUDA test groups of both ops, then
# the Gated DeltaNet and scalar benchmark suites, on a machine where torch / triton / fla are installed.
#   bash benchmarks/dev/gpu_check.sh            # about 3-5 min of tests, then about 6 min of benchmarks
#   BENCHES="" bash benchmarks/dev/gpu_check.sh # tests only
# Logs land in $OUT/gpu-check (default benchmarks/results/local, ignored); the summary is printed last.
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
R=$OUT/gpu-check
mkdir -p "$R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  git log -1 --format="commit: %H %s" 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c "import torch, triton, fla; print('torch', torch.__version__, '| triton', triton.__version__, '| fla', fla.__version__)"
} 2>&1 | tee "$R/env.txt"
SC=tests/ops/test_log_linear_attn_chunk.py
SR=tests/ops/test_log_linear_attn_fused_recurrent.py
GC=tests/ops/test_log_linear_gated_delta_rule_chunk.py
GR=tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py
GP=tests/ops/test_log_linear_gated_delta_rule_pending.py
# name|files|-k expression (the groups of benchmarks/gpu_run.sh, plus the Triton level helpers natively)
TESTS=${TESTS-"scalar-chunk|$SC|gpu or cuda or forward_only;scalar-decode|$SR|gpu or cuda;gdn|$GC $GR $GP|(gpu or cuda or forward_only) and not triton and not fused_local;gdn-fused|$GC|(gpu or cuda) and (triton or fused_local);levels|tests/test_levels.py|triton;generate|tests/patches/test_cpu.py tests/patches/test_generate.py|gpu or cuda"}
IFS=';' read -ra groups <<< "$TESTS"
pids=()
for grp in "${groups[@]}"; do
  [ -z "$grp" ] && continue
  IFS='|' read -r name files sel <<< "$grp"
  ( timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -p no:cacheprovider $files -k "$sel" > "$R/tests-$name.log" 2>&1
    echo "tests-$name rc=$?" >> "$R/summary.txt" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
BENCHES=${BENCHES-"log_linear_gated_delta_rule log_linear_attn"}
for b in $BENCHES; do
  BENCH_JSONL="$R/bench-$b.jsonl" timeout "${BENCH_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider \
    "benchmarks/test_bench_$b.py" --benchmark-only --benchmark-json "$R/bench-$b.json" > "$R/bench-$b.log" 2>&1
  echo "bench-$b rc=$?" >> "$R/summary.txt"
  python3 benchmarks/plot.py "$R/bench-$b.jsonl" "$R/bench-$b.png" > "$R/bench-$b.md" 2>&1
done
for f in "$R"/tests-*.log "$R"/bench-*.log; do [ -e "$f" ] && { echo "== $f"; tail -n 3 "$f"; } >> "$R/summary.txt"; done
cat "$R/summary.txt"
