#!/usr/bin/env bash
# Run 11: A/B profiles of scalar-kernel variants (GPU 1), their tests + GDN smoke + GPU demo (GPU 0).
# A = this tree (main), B = exp/scalar-regs, C = B without 16-bit node copies, D = A without them.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
for v in B C D; do mkdir -p /tmp/v/$v && tar -xf .variants/$v.tar -C /tmp/v/$v; done
mkdir -p /tmp/v && ln -s $PWD /tmp/v/A
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH=/tmp/site python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
prof() {  # GPU 1, one variant after another
  for v in A B C D; do
    lens="4096 65536"
    ( cd /tmp/v/$v && CUDA_VISIBLE_DEVICES=1 PYTHONPATH=/tmp/site:/tmp/v/$v TRITON_CACHE_DIR=/tmp/tc-$v \
      timeout 130 python3 benchmarks/profile_ops.py scalar $lens > $R/profile-$v.txt 2>&1; st "profile $v rc=$?" )
  done
}
tst() {  # GPU 0: name, tree, timeout, pytest args...
  local name=$1 tree=$2 to=$3; shift 3
  ( cd /tmp/v/$tree && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:/tmp/v/$tree TRITON_CACHE_DIR=/tmp/tc0-$name \
    timeout $to python3 -m pytest -q -p no:cacheprovider "$@" > $R/tests-$name.log 2>&1; st "tests-$name rc=$?" )
}
prof & P=$!
tst scalar-B B 420 tests/ops/test_log_linear_attn_chunk.py -k "gpu or cuda or forward_only" &
tst scalar-C C 420 tests/ops/test_log_linear_attn_chunk.py -k "gpu or cuda or forward_only" &
tst gdn-million A 420 tests/ops/test_log_linear_gated_delta_rule_chunk.py -k "million" &
( cd /tmp/v/A && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:/tmp/v/A TRITON_CACHE_DIR=/tmp/tc0-demo \
  timeout 420 python3 -m fla_loglinear demo --no-progress --output $R/demo > $R/demo.log 2>&1; st "demo rc=$?" ) &
wait
cd $OUT && tar -czf run11.tar.gz run && rm -rf run
