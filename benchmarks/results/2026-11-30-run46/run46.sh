#!/usr/bin/env bash
# Run 46 (2 GPUs): exp/seg-bwd 69912a2 (.variants/exp46, in /tmp/exp) against main b46209d (repo root).
#   GPU 1: main's defaults at 32K / 64K (two passes), then the branch's settings sweep
#   GPU 0: the branch's GDN chunked-op GPU tests, three processes (incl. the new short-segment test)
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
rm -rf /tmp/exp && mkdir /tmp/exp && tar --exclude=./.variants --exclude=./.whl --exclude=./.git -cf - . | tar -xf - -C /tmp/exp && cp -r .variants/exp46/. /tmp/exp/ || exit 1
export PYTHONUNBUFFERED=1
F=fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py
{ date -u; echo "main: $(md5sum $F)"; echo "branch: $(md5sum /tmp/exp/$F)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH=/tmp/site python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
st() { echo "$(date -u +%H:%M:%S) $*" >> $R/summary.txt; }
tst() {  # name, pytest args...
  local name=$1; shift
  (cd /tmp/exp && CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/site:/tmp/exp TRITON_CACHE_DIR=/tmp/tc0-$name timeout 470 \
    python3 -m pytest -q -p no:cacheprovider "$@" > $R/tests-$name.log 2>&1); st "tests-$name rc=$?"
}
G=tests/ops/test_log_linear_gated_delta_rule_chunk.py
st start
tst fwdbwd $G -k "gpu_forward_backward_vs_reference or gpu_slot_scan_with_many_programs or gpu_million or gpu_short_segments" &
tst heads $G -k "gpu_head_dims_and_varlen" &
tst rest $G -k "gpu_continuation or gpu_unit_lambdas or gpu_layer_options or gpu_fused_local" &
export CUDA_VISIBLE_DEVICES=1 TRITON_CACHE_DIR=/tmp/tc1
PYTHONPATH=/tmp/site:$PWD timeout 150 python3 benchmarks/sweep_gdn.py 32768 65536 --only "defaults;defaults" > $R/sweep-main.txt 2>&1; st "sweep-main rc=$?"
P="no segmented backward;grads maxnreg=128;grads maxnreg=96 warps=4;grads in three launches;grads in three launches maxnreg=128;bwd segments of 32 chunks;bwd segments of 128 chunks"
(cd /tmp/exp && PYTHONPATH=/tmp/site:/tmp/exp timeout 330 python3 benchmarks/sweep_gdn.py 32768 65536 --only "$P;defaults;grads maxnreg=128;grads in three launches maxnreg=128") > $R/sweep-branch.txt 2>&1; st "sweep-branch rc=$?"
wait; st done
cd $OUT && tar -czf run46.tar.gz run && rm -rf run
