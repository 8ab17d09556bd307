#!/usr/bin/env bash
# One GPU run: `bash benchmarks/gpu_run.sh` (installs the fla wheels of .whl/ first where that folder exists).
# 1. PROFILES: kernel-by-kernel profiles (benchmarks/profile_ops.py) on a quiet GPU, one at a time;
# 2. TESTS: test groups side by side (correctness only; a CUDA fault poisons only its own group), and
#    beside them SWEEP: `python -m fla_loglinear mqar` arguments (empty: skipped), whose accuracies do not
#    depend on what else shares the GPU (its ms/step do: time steps with a sweep of its own, alone);
# 3. BENCHES: pytest-benchmark suites one after another on a quiet GPU;
# 4. MODELS: `python -m fla_loglinear bench` arguments for the model-level report (empty: skipped).
# On a machine with two GPUs, MODELS_GPU=1 runs stage 4 on the second GPU from the start, beside
# stages 1-3 on the first (each stage keeps a GPU to itself, so timings stay undisturbed).
# Everything lands in $OUT/run and is packed into $OUT/run.tar.gz (the device tool brings back at
# most 8 files).  Each stage's variable overrides its default; "" skips the stage.
set -uo pipefail
OUT=${OUT:-benchmarks/out}
R=$OUT/run
mkdir -p "$R"
# SITE: where the wheels go (two copies of this script running side by side need one each); without a
# .whl/ folder the installed packages are used as they are
SITE=${SITE:-/tmp/site}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl || exit 1
fi
# the Triton cache (compiled kernels and, with the two flags, autotuning results) in an ignored folder of
# the checkout: a device machine keeps it between calls while it stays warm
export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/benchmarks/out/triton-cache} \
  TRITON_CACHE_AUTOTUNING=1 FLA_CACHE_RESULTS=1
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  # the device copy's git directory can be older than the tree it runs: pass TREE=<commit>
  if [ -n "${TREE:-}" ]; then echo "tree: $TREE"; else git log -1 --format="commit: %H %s" 2>/dev/null || true; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$R/env.txt"
stamp() { echo "$(date -u +%H:%M:%S) $*" >> "$R/summary.txt"; }
models() {
  timeout "${MODELS_TIMEOUT:-300}" python3 -m fla_loglinear bench --output "$R/models" $MODELS > "$R/models.log" 2>&1
  stamp "models rc=$?"
}
MODELS=${MODELS-""}
MODELS_PID=
if [ -n "$MODELS" ] && [ -n "${MODELS_GPU:-}" ]; then
  CUDA_VISIBLE_DEVICES=$MODELS_GPU models &
  MODELS_PID=$!
  export CUDA_VISIBLE_DEVICES=0
fi

PROFILES=${PROFILES-"scalar 4096 16384 65536;gdn 4096"}
IFS=';' read -ra profs <<< "$PROFILES"
for p in "${profs[@]}"; do
  [ -z "$p" ] && continue
  timeout "${PROFILE_TIMEOUT:-150}" python3 benchmarks/profile_ops.py $p >> "$R/profiles.txt" 2>&1
  stamp "profile '$p' rc=$?"
done

TT=${TEST_TIMEOUT:-300}
SC=tests/ops/test_log_linear_attn_chunk.py
SR=tests/ops/test_log_linear_attn_fused_recurrent.py
GC=tests/ops/test_log_linear_gated_delta_rule_chunk.py
GR=tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py
GP=tests/ops/test_log_linear_gated_delta_rule_pending.py
# name|files|-k expression
TESTS=${TESTS-"scalar-chunk|$SC|gpu or cuda or forward_only;scalar-decode|$SR|gpu or cuda;gdn|$GC $GR $GP|(gpu or cuda or forward_only) and not triton and not fused_local;gdn-fused|$GC|(gpu or cuda) and (triton or fused_local);levels|tests/test_levels.py|triton;generate|tests/patches/test_cpu.py tests/patches/test_generate.py|gpu or cuda;models|tests/patches/test_models.py tests/layers|gpu or cuda;compile|tests/training/test_compile.py tests/ops/test_library.py|cuda"}
SWEEP=${SWEEP-""}
SWEEP_PID=
if [ -n "$SWEEP" ]; then
  ( timeout "${SWEEP_TIMEOUT:-540}" python3 -m fla_loglinear mqar --output "$R/mqar.json" $SWEEP > "$R/mqar.log" 2>&1
    stamp "mqar rc=$?" ) &
  SWEEP_PID=$!
fi
IFS=';' read -ra groups <<< "$TESTS"
test_pids=()
for grp in "${groups[@]}"; do
  [ -z "$grp" ] && continue
  IFS='|' read -r name files sel <<< "$grp"
  ( timeout "$TT" python3 -m pytest -q -p no:cacheprovider $files -k "$sel" > "$R/tests-$name.log" 2>&1
    stamp "tests-$name rc=$?" ) &
  test_pids+=($!)
done
# not a bare `wait`: that would also wait for the models stage on the other GPU
for p in "${test_pids[@]}" $SWEEP_PID; do wait "$p"; done
for f in "$R"/tests-*.log; do [ -e "$f" ] && { echo "== $f"; tail -n 4 "$f"; } >> "$R/summary.txt"; done

BENCHES=${BENCHES-"log_linear_attn||170;log_linear_gated_delta_rule||170;log_linear_gated_delta_rule_decode||60"}
IFS=';' read -ra suites <<< "$BENCHES"
for suite in "${suites[@]}"; do
  [ -z "$suite" ] && continue
  IFS='|' read -r b sel bt <<< "$suite"
  tag=$b${sel:+-sel}
  BENCH_JSONL="$R/bench-$tag.jsonl" timeout "${bt:-170}" python3 -m pytest -q -p no:cacheprovider \
    "benchmarks/test_bench_$b.py" ${sel:+-k "$sel"} --benchmark-only --benchmark-json "$R/bench-$tag.json" \
    > "$R/bench-$tag.log" 2>&1
  stamp "bench-$tag rc=$?"
  python3 benchmarks/plot.py "$R/bench-$tag.jsonl" "$R/bench-$tag.png" >> "$R/bench-$tag.md" 2>&1
done

if [ -n "$MODELS_PID" ]; then
  wait "$MODELS_PID"
elif [ -n "$MODELS" ]; then
  models
fi
cat "$R/summary.txt"
tar -czf "$OUT/run.tar.gz" -C "$OUT" run
cp "$R/summary.txt" "$R/env.txt" "$OUT/"
for f in mqar.md mqar.png; do [ -e "$R/$f" ] && cp "$R/$f" "$OUT/"; done
[ -e "$R/profiles.txt" ] && cp "$R/profiles.txt" "$OUT/"
exit 0
