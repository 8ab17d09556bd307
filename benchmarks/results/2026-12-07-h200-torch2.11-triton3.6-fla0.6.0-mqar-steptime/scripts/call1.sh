#!/usr/bin/env bash
# call 1: the MQAR sweep (full preset, seed 0 at widths 32/64, 14 workers); then on the quiet GPU the
# sweep models' ms/step at width 64 and the 125M Gated DeltaNet training step at 8K (eager, profiled)
set -uo pipefail
BUDGET_S=${BUDGET_S:-545}
. .devrun/common.sh
SW_DEADLINE=${SW_DEADLINE:-330}
stage mqar $((SW_DEADLINE + 40)) python3 -m fla_loglinear mqar --preset full --workers 14 --deadline-s $SW_DEADLINE \
  --widths ${WIDTHS:-32,64} --seeds 0 ${RESUME:+--resume $RESUME} --output $R/mqar.json
tail -n 4 $R/mqar.log
stage step-times 60 python3 -m fla_loglinear mqar --preset full --workers 1 --widths 64 --lrs 2e-3 --seeds 0 \
  --seed-widths 64 --form-widths 64 --forms lowrank --steps 150 --output $R/step-times.json
tail -n 8 $R/step-times.log
stage train-gdn-8k 130 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --profile --output $R/train-gdn-8k
cat $R/train-gdn-8k/train.md 2>/dev/null; tail -n 5 $R/train-gdn-8k.log
[ -e $R/mqar.md ] && cp $R/mqar.md $OUT/
pack
