#!/usr/bin/env bash
# rerun of the tests that failed in s7 (all but one from 15 processes sharing an 80 GB card), 3 at a time
set -uo pipefail
BUDGET_S=${BUDGET_S:-380}
. .devrun/common.sh
export TT=$(( BUDGET_S - ($(date +%s) - T0) - 40 ))
cp .devrun/failed.txt $R/ids-failed.txt
for i in 0 1 2; do awk -v i=$i 'NR % 3 == i' $R/ids-failed.txt > $R/ids-$i.txt
  ( timeout $TT python3 -m pytest -q -p no:cacheprovider $(cat $R/ids-$i.txt) > $R/tests-rerun-$i.log 2>&1; echo "rerun-$i rc=$?" >> $R/summary.txt ) & done
wait
for f in $R/tests-rerun-*.log; do echo "== $f: $(tail -n 1 $f)"; done | tee -a $R/summary.txt
grep -h -E "^(FAILED|ERROR)|^E  .*(ratio|assert)" $R/tests-*.log | cut -c1-200 | head -20
tar -czf $OUT/run.tar.gz -C $OUT run; cp $R/summary.txt $OUT/
