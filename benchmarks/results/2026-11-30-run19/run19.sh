#!/usr/bin/env bash
# Run 19 (2 GPUs).  GPU 1: V-block / launch sweep of the GDN slot scans at 4K / 32K / 64K (sweep_gdn.py), then
# the host-side profile of the GDN forward and fwd+bwd (profile_ops.py --host).  GPU 0: the model-level GPU tests.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
gpu1() {
  export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
  timeout 90 python3 benchmarks/profile_ops.py gdn 4096 32768 --host > $R/host-gdn.txt 2>&1; st "host rc=$?"
  timeout 330 python3 benchmarks/sweep_gdn.py 4096 32768 65536 > $R/sweep-gdn.txt 2>&1; st "sweep rc=$?"
}
gpu1 > $R/gpu1.out 2>&1 &
CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc0 timeout 530 python3 -m pytest -q -p no:cacheprovider \
  tests/patches/test_models.py tests/layers -k "gpu or cuda" > $R/tests-models.log 2>&1; st "tests-models rc=$?" &
wait
cd $OUT && tar -czf run19.tar.gz run && rm -rf run
