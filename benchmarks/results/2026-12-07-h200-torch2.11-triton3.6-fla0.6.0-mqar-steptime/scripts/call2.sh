#!/usr/bin/env bash
set -uo pipefail
BUDGET_S=${BUDGET_S:-370}
. .devrun/common.sh
stage train-gdn-8k 150 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --output $R/train-gdn-8k
cat $R/train-gdn-8k/train.md 2>/dev/null; tail -n 4 $R/train-gdn-8k.log
left=$(( BUDGET_S - ($(date +%s) - T0) - 25 ))
stage mqar $left python3 -m fla_loglinear mqar --preset full --workers 14 --deadline-s $((left - 15)) \
  --widths 32 --seeds 0,1 --seed-widths 32 --resume .devrun/mqar1.json --output $R/mqar.json
tail -n 5 $R/mqar.log
tar -czf $OUT/run2.tar.gz -C $OUT run; rm -rf $R; echo "elapsed $(( $(date +%s) - T0 )) s"
