#!/usr/bin/env bash
# call A: the GPU test groups, and beside them the MQAR sweep (full preset, 8 workers)
set -uo pipefail
date -u
SWEEP="--preset full --workers 8 --deadline-s 490" SWEEP_TIMEOUT=545 TEST_TIMEOUT=540 PROFILES="" BENCHES="" MODELS="" \
  OUT=$OUT bash benchmarks/gpu_run.sh
tail -n 30 $OUT/run/mqar.log
date -u
#!/usr/bin/env bash
# call B (quiet GPU, one thing at a time): ms/step of the MQAR models at width 64; op benchmarks vs fla;
# model-level training throughput of Gated DeltaNet at T = 8192, eager (with profile) and compiled per block
set -uo pipefail
date -u
export TRITON_CACHE_DIR=$PWD/benchmarks/out/triton-cache TRITON_CACHE_AUTOTUNING=1 FLA_CACHE_RESULTS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD
R=$OUT/run; mkdir -p $R
timeout 100 python3 -m fla_loglinear mqar --preset full --workers 1 --widths 64 --lrs 3e-3 --seeds 0 --seed-widths 64 \
  --form-widths 64 --steps 100 --output $R/step-times.json > $R/step-times.log 2>&1
echo "$(date -u +%T) step-times rc=$?" | tee -a $R/calls.txt
SITE=/tmp/site TESTS="" PROFILES="" MODELS="" \
  BENCHES="log_linear_attn|ours or fla_simple_gla|125;log_linear_gated_delta_rule|(ours or fla) and not torchlocal and not sdpa|125" \
  OUT=$OUT bash benchmarks/gpu_run.sh > $R/gpu_run.out 2>&1
echo "$(date -u +%T) benches done" | tee -a $R/calls.txt
timeout 100 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --profile --output $R/eager \
  > $R/eager.log 2>&1; echo "$(date -u +%T) eager rc=$?" | tee -a $R/calls.txt
timeout 110 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --compile --output $R/compiled \
  > $R/compiled.log 2>&1; echo "$(date -u +%T) compiled rc=$?" | tee -a $R/calls.txt
tail -n 14 $R/step-times.log; cat $R/eager/train.md $R/compiled/train.md 2>/dev/null; cat $R/*.md 2>/dev/null | head -40
tar -czf /tmp/callB.tar.gz -C $OUT run && rm -rf $OUT/* && mv /tmp/callB.tar.gz $OUT/
date -u
#!/usr/bin/env bash
set -uo pipefail
export TRITON_CACHE_DIR=$PWD/benchmarks/out/triton-cache TRITON_CACHE_AUTOTUNING=1 FLA_CACHE_RESULTS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:$PWD
date -u
timeout 270 python3 -m fla_loglinear mqar --preset full --workers 12 --resume .devrun/mqarA.json --output $OUT/mqarC.json > $OUT/mqarC.log 2>&1
echo "rc=$?"; date -u; tail -n 20 $OUT/mqarC.log
