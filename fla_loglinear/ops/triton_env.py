"""Where our Triton kernels run (GPU or the interpreter) and at which matmul precision."""
from __future__ import annotations

import os

import torch

__all__ = ["interpreter_on", "use_triton", "dot_precision"]


def interpreter_on() -> bool:
    # tests/conftest.py switches the interpreter on (CPU-only machines) before kernels are imported
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor, force: bool) -> bool:
    """CUDA tensors take the kernels; CPU tensors only when a test forces them under the interpreter."""
    return x.is_cuda or (force and interpreter_on())


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision: fp32 inputs get near-fp32 products (three TF32 passes; plain TF32 is
    off by ~1e-3 relative and drifts over thousands of chunks); 16-bit inputs ignore it."""
    return "tf32x3" if dtype == torch.float32 else "tf32"
