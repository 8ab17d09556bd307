#!/usr/bin/env bash
# Run 14: the scalar op's test_chunk_cuda after restricting 4 warps to the shapes run 13 verified.
set -uo pipefail
R=$OUT/run; mkdir -p $R
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"; } > $R/env.txt 2>&1
timeout 250 python3 -m pytest -q -p no:cacheprovider tests/ops/test_log_linear_attn_chunk.py -k "test_chunk_cuda" > $R/tests-scalar-chunk.log 2>&1
echo "tests rc=$?" >> $R/summary.txt
cd $OUT && tar -czf run14.tar.gz run && rm -rf run
