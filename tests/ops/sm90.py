"""Our kernels lowered for Hopper (sm_90) on a machine without a GPU.

The interpreter runs kernels as NumPy and accepts code that Triton's compiler rejects (run 9: a
constexpr holding a tensor) or lowers to instructions that fail on the H200 (run 4: 8-column TF32
wgmma).  These drivers lower kernels to Triton GPU IR for sm_90 at the block sizes the CUDA paths pick.
They must run without ``TRITON_INTERPRET``, so the tests call them in a subprocess:

    python -m tests.ops.sm90 hopper-mma-widths   # GDN kernels: {kernel and shape: wgmma N widths}
    python -m tests.ops.sm90 scalar-kernels      # scalar op: every kernel at two configurations
    python -m tests.ops.sm90 scalar-resources    # registers and spills (ptxas -v), benchmark shape
    python -m tests.ops.sm90 decode-kernels      # both decode kernels, new state and in place
    python -m tests.ops.sm90 gdn-scan-shared     # GDN slot-scan launches: shared memory, every dtype and head dim
    python -m tests.ops.sm90 gdn-scan-resources  # GDN slot-scan kernels: registers and spills (ptxas -v)

The resource drivers are tools, not tests: the scalar kernels' speed on the H200 tracked their register
pressure (one program per SM at 255 registers), and ptxas reports it without a GPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import torch
import triton

# (K, V) of the GDN kernels' MMA check: head dim 16, a narrow V block, the benchmark shape
MMA_HEAD_DIMS = [(16, 16), (128, 16), (128, 128)]


def lower(fn, consts: dict, scalars: dict, ptrs: dict, num_warps: int, until: str = "ttgir",
          num_stages: int | None = None, metadata: dict | None = None):
    """``fn`` compiled for sm_90 up to stage ``until`` ("ttgir", "llir" or "ptx"); returns that
    stage's text and fills ``metadata`` (shared memory bytes under "shared" from "llir" on).
    Arguments not in ``consts`` / ``scalars`` are pointers, to ``ptrs.get(name, "fp32")``;
    ``consts`` leaves out the kernel's constexprs it does not take."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig = {n: "constexpr" if n in consts else scalars.get(n) or "*" + ptrs.get(n, "fp32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    launch = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    opts = backend.parse_options({**launch, **src.parse_options()})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    mod = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), ctx)
    stages = {}
    backend.add_stages(stages, opts, src.language)
    metadata = {} if metadata is None else metadata
    for ext in ("ttir", "ttgir", "llir", "ptx"):
        mod = stages[ext](mod, metadata)
        if ext == until:
            return str(mod) if ext != "ptx" else mod
    raise ValueError(f"unknown stage {until!r}")


def ptx_resources(ptx: str) -> dict:
    """Registers and spill bytes per thread that the ptxas bundled with Triton reports for ``ptx``."""
    import tempfile

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        for _ in range(2):
            with open(path, "w") as f:
                f.write(ptx)
            run = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True)
            # a Triton newer than its bundled ptxas (3.9's emits PTX 9.4, its ptxas reads up to 8.8): the
            # kernels use nothing newer, so the PTX is read at the version ptxas names
            older = re.search(r"Unsupported \.version [\d.]+; current version is '([\d.]+)'", run.stderr)
            if run.returncode == 0 or not older:
                break
            ptx = re.sub(r"^\.version [\d.]+", f".version {older.group(1)}", ptx, count=1, flags=re.M)
        run.check_returncode()
        report = run.stderr

    def first(pattern):
        found = re.search(pattern, report)
        return int(found.group(1)) if found else 0
    return dict(registers=first(r"Used (\d+) registers"), spill_stores=first(r"(\d+) bytes spill stores"),
                spill_loads=first(r"(\d+) bytes spill loads"))


def hopper_mma_widths() -> dict:
    """``{kernel and shape: sorted wgmma N widths}`` of the GDN slot scan and fused local kernels (fp32)."""
    from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_local_fused as cf

    def widths(fn, consts, scalars, ptrs, num_warps, num_stages=None):
        found = re.findall(r"nvidia_mma<\{versionMajor = 3[^}]*instrShape = \[16, (\d+), \d+\]",
                           lower(fn, consts, scalars, ptrs, num_warps, num_stages=num_stages))
        assert found, "no wgmma layout found: the check would be vacuous"
        return sorted({int(n) for n in found})

    out = {}
    for K, V in MMA_HEAD_DIMS:
        for bwd in (False, True):
            BK, BV, prec = cf._config(K, V, torch.float32, bwd=bwd)
            fn = cf.chunk_local_fused_bwd_kernel if bwd else cf.chunk_local_fused_fwd_kernel
            consts = dict(HV=2, K=K, V=V, NLI=7, C=64, BK=BK, BV=BV, PREC=prec)
            scalars = {"NC": "i32", "scale": "fp32", "L": "i32"}
            out[f"fused {'bwd' if bwd else 'fwd'} K={K} V={V}"] = widths(fn, consts, scalars, {"a_off": "i32"},
                                                                         cf.BWD_NUM_WARPS if bwd else cf.NUM_WARPS)
        for name, fn, consts, ptrs, num_warps, stages in gdn_scan_launches(K, V, torch.float32):
            out[f"scan {name} K={K} V={V}"] = widths(fn, consts, GDN_SCALARS, ptrs, num_warps, stages)
    return out


# the integer arguments of the GDN slot-scan kernels
GDN_SCALARS = {"NC": "i32", "seg_lo": "i32", "seg_hi": "i32", "S": "i32"}


def gdn_scan_launches(K: int, V: int, dtype: torch.dtype) -> list[tuple]:
    """``(name, kernel, constexprs, pointer dtypes, num_warps, num_stages)`` of every GDN slot-scan
    launch the CUDA path makes at head dims ``K``, ``V`` (forward, replay, slot-gradient scan, the
    per-chunk gradient kernel's launches)."""
    from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_inter_bwd as cib
    from fla_loglinear.ops.log_linear_gated_delta_rule import chunk_inter_fwd as cif
    from fla_loglinear.ops.log_linear_gated_delta_rule.plan import grads_launches, out_blocks, plan_for, reloads_operands
    from fla_loglinear.ops.triton_env import dot_precision

    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    ptrs = {n: dt for n in ("qe", "w", "kd", "u", "hs", "dhs", "dqe", "dw", "dkd")}
    ptrs.update(chunk_offsets="i32", pos_start="i64", pos_end="i64", live_out="i64", live_in="i64",
                merge_out="i32", merge_in="i32", late_out="i8", late_in="i8", carry="i64")
    prec = dot_precision(dtype)
    out = []
    # the sweeps take 16-wide V blocks when 32-wide ones give few programs
    # (the plan of a CUDA device at either program count; the device only counts the SMs)
    plans = {plan_for(K, V, 16, dtype, "cpu", few_programs=few) for few in (False, True)}
    BK = out_blocks(K, V)[0]
    for BV, num_warps, prefetch in sorted({(p.sweep_bv, p.sweep_warps, p.prefetch) for p in plans}):
        base = dict(HV=16, K=K, V=V, L=14, C=64, BK=BK, BV=BV, PREC=prec, PREFETCH=prefetch)
        out += [(f"fwd STORE={store} BV={BV}", cif.chunk_inter_fwd_kernel,
                 dict(base, HAS_H0=True, STORE=store, META=not store, SEG=False), ptrs, num_warps, None)
                for store in (False, True)]
        out.append((f"fwd segment BV={BV}", cif.chunk_inter_fwd_kernel,
                    dict(base, HAS_H0=True, STORE=True, META=True, SEG=True), ptrs, num_warps, None))
        out.append((f"bwd BV={BV}", cib.chunk_inter_bwd_kernel, dict(base, RELOAD=reloads_operands(BK, dtype), PART=1), ptrs,
                    num_warps, None))
    BK, BV, num_warps = out_blocks(K, V)
    base = dict(HV=16, K=K, V=V, L=14, C=64, BK=BK, BV=BV, PREC=prec, PART=1)
    out.append(("segment output", cif.chunk_inter_out_kernel, base, ptrs, num_warps, None))
    base = dict(base, BV=plan_for(K, V, 16, dtype, "cpu").grads_bv)
    for launch in grads_launches(dtype):
        launch = dict(launch)
        stages = launch.pop("num_stages", None)
        groups = ",".join(k for k, on in launch.items() if on)
        out.append((f"grads {groups}", cib.chunk_inter_grads_kernel, dict(base, **launch), ptrs, num_warps, stages))
    return out


# shared memory per block on the H200 (sm_90), as triton 3.6 reports its limit (run 17)
H200_SHARED_BYTES = 232448


def gdn_scan_shared() -> dict:
    """``{launch: shared memory bytes}`` of every GDN slot-scan kernel launch the CUDA path makes,
    at head dims 16-256 in fp32 / bf16 / fp16 (run 17 found a launch over the limit)."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for K in (16, 32, 64, 128, 256):
            for name, fn, consts, ptrs, num_warps, stages in gdn_scan_launches(K, K, dtype):
                md = {}
                lower(fn, consts, GDN_SCALARS, ptrs, num_warps, "llir", stages, md)
                out[f"{dtype} K={K} {name}"] = md["shared"]
    return out


def gdn_scan_resources() -> dict:
    """``{launch: ptxas resources}`` of the GDN slot-scan kernels at the benchmark shape (bf16, K = V = 128)."""
    return {name: ptx_resources(lower(fn, consts, GDN_SCALARS, ptrs, num_warps, "ptx", stages))
            for name, fn, consts, ptrs, num_warps, stages in gdn_scan_launches(128, 128, torch.bfloat16)}


# (K, V, dtype) of the scalar op's compile check: the benchmark shape in bf16, and fp32 with four
# 64-wide K blocks and a V block wider than V
SCALAR_CONFIGS = [(128, 128, torch.bfloat16), (256, 32, torch.float32)]


def scalar_launches(K: int, V: int, dtype: torch.dtype, states: bool = True) -> list[tuple]:
    """``(kernel, constexprs, pointer dtypes, num_warps)`` of every scalar-op kernel as the CUDA path
    launches it at head dims ``K``, ``V``; ``states``: with an initial state and a final-state
    gradient (the branches with the most code), else without (the benchmarks' case)."""
    from fla_loglinear.ops.log_linear_attn import chunk, chunk_bwd, chunk_fwd, chunk_nodes
    from fla_loglinear.ops.triton_env import dot_precision

    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    BK, BV = chunk._blocks(K, V)
    SK, SV = chunk_nodes._scan_blocks(K, V)
    BT = chunk.CHUNK_SIZE
    consts = dict(H=4, G=2, K=K, V=V, L=18, LP=32, BT=BT, LOG2_BT=BT.bit_length() - 1, BK=BK, BV=BV,
                  NK=triton.cdiv(K, BK), NV=triton.cdiv(V, BV), USE_INITIAL_STATE=states, HAS_DHT=states,
                  POS_BITS=chunk.POS_BITS, DOT_PREC=dot_precision(dtype), S=chunk_nodes.SCAN_SEGMENT,
                  STORE_LOW=dtype != torch.float32)
    scan = dict(consts, BK=SK, BV=SV)
    ptrs = {n: dt for n in ("q", "k", "v", "do", "o", "dv", "dq", "dk", "lam", "Fl", "dFl")}
    ptrs.update(chunk_indices="i32", node_order="i32", seq_bos="i64", seq_len="i64", chunk_offsets="i64",
                pos0="i64", Gb="fp64")
    # per-chunk kernels read the input-dtype node copies, the final state the float32 nodes
    low = dict(ptrs, F=dt, dF=dt)
    warps = chunk._warps(BT, K, V, dtype)
    return [
        (chunk_nodes.chunk_fenwick_nodes_fwd_kernel, scan, ptrs, 4),
        (chunk_nodes.chunk_fenwick_nodes_fwd_ends_kernel, scan, ptrs, 4),
        (chunk_nodes.chunk_fenwick_nodes_bwd_ends_kernel, scan, ptrs, 4),
        (chunk_nodes.chunk_fenwick_nodes_bwd_kernel, scan, ptrs, 4),
        (chunk_fwd.chunk_gate_sum_kernel, consts, ptrs, 4),
        (chunk_fwd.chunk_log_linear_attn_fwd_o_kernel, consts, low, warps),
        (chunk_fwd.chunk_log_linear_attn_fwd_final_state_kernel, consts, ptrs, 4),
        (chunk_bwd.chunk_log_linear_attn_bwd_dnodes_kernel, consts, ptrs, 4),
        (chunk_bwd.chunk_log_linear_attn_bwd_dv_kernel, consts, low, warps),
        (chunk_bwd.chunk_log_linear_attn_bwd_dqk_kernel, consts, low, warps),
        (chunk_bwd.chunk_log_linear_attn_bwd_dstate_kernel, consts, ptrs, 4),
    ]


SCALAR_SCALARS = {"scale": "fp32", "BTOT": "i64"}


def scalar_kernels() -> list[str]:
    """Names of the scalar op's kernels lowered at ``SCALAR_CONFIGS``."""
    names = []
    for K, V, dtype in SCALAR_CONFIGS:
        for fn, consts, ptrs, num_warps in scalar_launches(K, V, dtype):
            lower(fn, consts, SCALAR_SCALARS, ptrs, num_warps)
            names.append(f"{fn.__name__} K={K} V={V} {dtype}")
    return names


def scalar_resources() -> dict:
    """``{kernel: ptxas resources}`` as the benchmark launches them (bf16, K = V = 128, no states)."""
    return {fn.__name__: ptx_resources(lower(fn, consts, SCALAR_SCALARS, ptrs, num_warps, "ptx"))
            for fn, consts, ptrs, num_warps in scalar_launches(128, 128, torch.bfloat16, states=False)}


def decode_kernels() -> list[str]:
    """Both variants' decode kernels lowered at the benchmark shape (K = V = 128, bf16, L = 18),
    writing a new state and in place."""
    from fla_loglinear.ops.log_linear_attn import fused_recurrent as scalar
    from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent as gdn

    names = []
    ptrs = {n: "bf16" for n in ("q", "k", "v", "o", "beta")}
    ptrs.update(seq_bos="i64", seq_len="i64", pos0="i64", pos="i64", cu_seqlens="i64")
    for inplace in (False, True):
        lower(scalar.fused_recurrent_log_linear_attn_fwd_kernel,
              dict(H=16, G=16, K=128, V=128, L=18, BK=128, BV=32, USE_INITIAL_STATE=True, INPLACE=inplace,
                   IS_VARLEN=False, POS_BITS=scalar.POS_BITS), {"scale": "fp32", "T": "i32"}, ptrs, 4)
        lower(gdn.fused_recurrent_fwd_kernel,
              dict(H=16, HV=16, K=128, V=128, L=18, BK=128, BV=32, IS_VARLEN=False, HAS_H0=True, INPLACE=inplace),
              {"scale": "fp32", "T": "i32", "S_K": "i32", "S_V": "i32"}, ptrs, 4)
        names += [f"scalar decode inplace={inplace}", f"gdn decode inplace={inplace}"]
    return names


def run_uninterpreted(driver: str):
    """Runs ``driver`` in a subprocess without the interpreter; returns its JSON result."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, "-m", "tests.ops.sm90", driver], env=env, cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


DRIVERS = {"hopper-mma-widths": hopper_mma_widths, "scalar-kernels": scalar_kernels,
           "scalar-resources": scalar_resources, "decode-kernels": decode_kernels,
           "gdn-scan-resources": gdn_scan_resources, "gdn-scan-shared": gdn_scan_shared}

if __name__ == "__main__":
    print(json.dumps(DRIVERS[sys.argv[1]]()))
