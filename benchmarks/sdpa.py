"""Causal SDPA, the quadratic baseline of the op benchmarks, by backend.

- ``sdpa``: what a caller of ``F.scaled_dot_product_attention`` gets, torch's own choice of backend
  (recorded with each result, see :func:`chosen_backend`);
- ``sdpa-flash``: the flash backend forced, which every SDPA row of results runs 1-44 measured;
- ``sdpa-cudnn``: the cuDNN backend forced.

Why three: anchors.md (``triton.testing.do_bench``, H200, torch 2.11) has causal SDPA fwd+bwd at 7.70 ms at
8K and 14.6 at 16K, where the flash-forced rows of our runs measured 13.1 and 24.5 ms at the same shape; which
backend runs decides whether the log-linear ops beat SDPA at those lengths.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"sdpa": None, "sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
SDPA_OPS = tuple(BACKENDS)


def sdpa_causal(op: str):
    """``f(q, k, v)``: causal SDPA of ``[B, H, T, D]`` inputs with the backend of ``op``."""
    backend = BACKENDS[op]

    def f(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return f


def backend_used(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The backend that runs ``op`` on these inputs.  A forced backend that cannot take them skips the
    benchmark with torch's reason (``sdpa_kernel`` with one backend raises rather than falls back)."""
    backend = BACKENDS[op]
    if backend is None:
        return chosen_backend(q, k, v)
    try:
        with torch.no_grad():
            sdpa_causal(op)(q, k, v)
    except RuntimeError as e:
        pytest.skip(f"{op}: torch cannot run {backend.name} here: {str(e).splitlines()[0][:200]}")
    return backend.name


def chosen_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The backend torch dispatches causal SDPA on these inputs to (through its private chooser, so an
    unknown name rather than an error if a torch release drops it)."""
    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name
    except (AttributeError, RuntimeError, ValueError) as e:
        return f"unknown ({type(e).__name__})"
