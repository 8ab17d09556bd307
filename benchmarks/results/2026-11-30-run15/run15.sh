#!/usr/bin/env bash
# Run 15: GPU 0: GDN fwd+bwd kernel profile (fused default) and stage profile at 4K / 64K.
#         GPU 1: GDN decode variants A (main) B (skip empty-slot body) C (B, BV=16) D (B, 8 warps) E (B, BV=64, 8 warps):
#                registers, decode benchmark each, then the GDN decode GPU tests on B.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH=/tmp/site python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
mkdir -p /tmp/var && tar -xf .variants/dec.tar -C /tmp/var
gpu1() {
  export CUDA_VISIBLE_DEVICES=1
  for v in A B C D E; do
    d=/tmp/var/$v; cp -r benchmarks tests $d/
    ( cd $d && export PYTHONPATH=$d:/tmp/site TRITON_CACHE_DIR=/tmp/tc-$v
      timeout 60 python3 $OLDPWD/.variants/regs.py $v >> $R/regs.txt 2>&1; st "regs-$v rc=$?"
      BENCH_JSONL=$R/dec-$v.jsonl timeout 60 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bench_log_linear_gated_delta_rule_decode.py \
        --benchmark-only --benchmark-json $R/dec-$v.json > $R/dec-$v.log 2>&1; st "dec-$v rc=$?" )
  done
  ( cd /tmp/var/B && PYTHONPATH=/tmp/var/B:/tmp/site TRITON_CACHE_DIR=/tmp/tc-B timeout 200 python3 -m pytest -q -p no:cacheprovider \
      tests/ops/test_log_linear_gated_delta_rule_fused_recurrent.py -k "gpu or cuda" > $R/tests-decode-B.log 2>&1; st "tests-decode-B rc=$?" )
}
gpu0() {
  export CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc0
  timeout 240 python3 benchmarks/profile_ops.py gdn 4096 65536 > $R/profile-ops-gdn.txt 2>&1; st "profile-ops rc=$?"
  timeout 200 python3 benchmarks/profile_gdn.py 4096 65536 > $R/profile-gdn.txt 2>&1; st "profile-gdn rc=$?"
}
gpu1 > $R/gpu1.out 2>&1 &
gpu0 > $R/gpu0.out 2>&1 &
wait
cd $OUT && tar -czf run15.tar.gz run && rm -rf run
