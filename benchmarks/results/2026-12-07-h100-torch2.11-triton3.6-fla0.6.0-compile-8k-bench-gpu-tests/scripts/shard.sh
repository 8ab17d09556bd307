#!/usr/bin/env bash
# shard.sh NAME N "files" "-k expr": the selected tests dealt round-robin into N pytest processes side by side
name=$1 n=$2 files=$3 sel=$4
python3 -m pytest --co -q -p no:cacheprovider $files -k "$sel" 2>/dev/null | grep '::' > $R/ids-$name.txt
pids=()
for i in $(seq 0 $((n - 1))); do
  awk -v n=$n -v i=$i 'NR % n == i' $R/ids-$name.txt > $R/ids-$name-$i.txt
  [ -s $R/ids-$name-$i.txt ] || continue
  ( timeout ${TT:-250} python3 -m pytest -q -p no:cacheprovider $(cat $R/ids-$name-$i.txt) > $R/tests-$name-$i.log 2>&1
    echo "$(date -u +%T) tests-$name-$i rc=$?" >> $R/summary.txt ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
