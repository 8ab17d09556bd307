#!/usr/bin/env bash
# session 5 call A, quiet GPU (issue 21): 125M training step, Gated DeltaNet at 8K eager (profiled) and
# compiled per block, Mamba-2 at 8K, Gated DeltaNet at 2K/32K
set -uo pipefail
BUDGET_S=${BUDGET_S:-545}
. .devrun/common.sh
stage train-gdn-8k 220 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --profile --output $R/train-gdn-8k
cat $R/train-gdn-8k/train.md 2>/dev/null; tail -n 5 $R/train-gdn-8k.log
stage train-gdn-8k-compiled 160 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 8192 --compile --output $R/train-gdn-8k-compiled
cat $R/train-gdn-8k-compiled/train.md 2>/dev/null; tail -n 5 $R/train-gdn-8k-compiled.log
stage train-mamba2-8k 100 python3 -m fla_loglinear bench --parts train --archs mamba2 --seq-lens 8192 --output $R/train-mamba2-8k
cat $R/train-mamba2-8k/train.md 2>/dev/null; tail -n 5 $R/train-mamba2-8k.log
stage train-gdn-2k-32k 120 python3 -m fla_loglinear bench --parts train --archs gdn --seq-lens 2048,32768 --output $R/train-gdn-2k-32k
cat $R/train-gdn-2k-32k/train.md 2>/dev/null; tail -n 5 $R/train-gdn-2k-32k.log
pack
