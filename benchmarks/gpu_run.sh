#!/usr/bin/env bash
# One device run on the GPU machine (see ../shared/gpu/README.md): `bash benchmarks/gpu_run.sh`.
# Test groups run side by side (correctness only), then the benchmarks one after another on a
# quiet GPU.  Everything lands in $OUT/run and is packed into $OUT/run.tar.gz (the device tool
# brings back at most 8 files).  Env: TEST_TIMEOUT, BENCH_TIMEOUT (seconds per group).
set -uo pipefail
OUT=${OUT:-benchmarks/results/local}
R=$OUT/run
mkdir -p "$R"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-cache
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  git log -1 --format="commit: %H %s" 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$R/env.txt"
TT=${TEST_TIMEOUT:-240}
pt() { local name=$1; shift; timeout "$TT" python3 -m pytest -q -p no:cacheprovider "$@" > "$R/tests-$name.log" 2>&1; echo "tests-$name rc=$?" >> "$R/summary.txt"; }
pt scalar tests/ops/test_log_linear_attn_chunk.py tests/ops/test_log_linear_attn_fused_recurrent.py &
pt gdn tests/ops/test_log_linear_gated_delta_rule_chunk.py tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu or cuda or forward_only" &
pt models tests/patches tests/layers -k "gpu or cuda" &
wait
tail -n 3 "$R"/tests-*.log | tee -a "$R/summary.txt"
# Benchmarks on a quiet GPU, one suite at a time; "file|-k expression|timeout" each (BENCHES overrides).
BENCHES=${BENCHES:-"log_linear_attn||170;log_linear_gated_delta_rule||170;log_linear_gated_delta_rule_decode||60"}
IFS=';' read -ra suites <<< "$BENCHES"
for suite in "${suites[@]}"; do
  IFS='|' read -r b sel bt <<< "$suite"
  tag=$b${sel:+-sel}
  BENCH_JSONL="$R/bench-$tag.jsonl" timeout "${bt:-170}" python3 -m pytest -q -p no:cacheprovider \
    "benchmarks/test_bench_$b.py" ${sel:+-k "$sel"} --benchmark-only --benchmark-json "$R/bench-$tag.json" \
    > "$R/bench-$tag.log" 2>&1
  echo "bench-$tag rc=$?" >> "$R/summary.txt"
  python3 benchmarks/plot.py "$R/bench-$tag.jsonl" "$R/bench-$tag.png" >> "$R/bench-$tag.md" 2>&1
done
cat "$R/summary.txt"
tar -czf "$OUT/run.tar.gz" -C "$OUT" run
cp "$R/summary.txt" "$R/env.txt" "$OUT/"
