# sourced by the call scripts: wheels, env, the Triton cache (carried as .devrun/tcache.tar.xz when cold)
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=$PWD/benchmarks/out/triton-cache \
  TRITON_CACHE_AUTOTUNING=1 FLA_CACHE_RESULTS=1 TORCHINDUCTOR_CACHE_DIR=$PWD/benchmarks/out/inductor-cache
R=$OUT/run; mkdir -p $R
if [ ! -d benchmarks/out/triton-cache ] && ls .devrun/tcache.tar.xz* >/dev/null 2>&1; then
  mkdir -p benchmarks/out && cat .devrun/tcache.tar.xz* | tar -xJ -C benchmarks/out && echo "cache unpacked"
fi
{ date -u +"date: %Y-%m-%dT%H:%M:%SZ"; echo "pwd: $PWD"; echo "tree: ${TREE:-?}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, fla, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| triton', triton.__version__, '| fla', fla.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee $R/env.txt
# stage NAME LIMIT_S CMD...: runs CMD under its limit unless the call's budget (BUDGET_S) is spent
stage() {
  local name=$1 lim=$2; shift 2
  local left=$(( ${BUDGET_S:-560} - ($(date +%s) - T0) ))
  if [ $left -lt 30 ]; then echo "$(date -u +%T) $name skipped (budget)" | tee -a $R/summary.txt; return; fi
  [ $lim -gt $left ] && lim=$left
  timeout $lim "$@" > $R/$name.log 2>&1
  local rc=$?
  echo "$(date -u +%T) $name rc=$rc ($(( $(date +%s) - T0 )) s)" | tee -a $R/summary.txt
}
pack() {
  tar -czf $OUT/run.tar.gz -C $OUT run
  cp $R/summary.txt $OUT/ 2>/dev/null
  rm -rf $R
  tar -I "xz -T0 -6" -cf $OUT/tcache.tar.xz -C benchmarks/out --exclude='*.ttir' --exclude='*.ttgir' --exclude='*.llir' \
    --exclude='*.source' triton-cache
  # a file over 16 MiB does not come back: parts
  split -b 15M -d $OUT/tcache.tar.xz $OUT/tcache.tar.xz. && rm $OUT/tcache.tar.xz
  ls -la $OUT; echo "elapsed $(( $(date +%s) - T0 )) s"
}
