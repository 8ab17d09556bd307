"""Argument checks of the scalar-gated (Mamba-2 form) log-linear attention ops."""
from __future__ import annotations

import torch

from fla_loglinear.ops.checks import (
    check_cu_seqlens,
    check_dim,
    check_float_dtypes,
    check_heads,
    check_inplace_state,
    check_rank,
    check_same_device,
    check_state,
)
from fla_loglinear.state import FenwickState

__all__ = ["check_log_linear_attn_args", "check_log_linear_attn_decode_args"]


def check_log_linear_attn_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[int, int, int, int, int, int, int, int]:
    """Validates the inputs of a scalar-gated log-linear attention op before any work is done.

    Expected layout: ``q, k [B, T, G, K]``, ``v [B, T, H, V]``, ``g [B, T, H]``,
    ``level_scales [B, T, H, L]``, ``H % G == 0``; with ``cu_seqlens`` (``[N + 1]``) ``B == 1``;
    ``initial_state`` a :class:`FenwickState` with ``states [N, H, L, K, V]`` and
    ``positions [N]`` (non-negative; checked for CPU tensors only).

    Returns ``(B, T, G, H, K, V, L, N)``.
    """
    check_rank("q", q, 4, "[B, T, G, K]")
    check_rank("k", k, 4, "[B, T, G, K]")
    check_rank("v", v, 4, "[B, T, H, V]")
    check_rank("g", g, 3, "[B, T, H]")
    check_rank("level_scales", level_scales, 4, "[B, T, H, L]")
    # Device first: value checks below read cu_seqlens / positions back to the host.
    check_same_device(q=q, k=k, v=v, g=g, level_scales=level_scales, cu_seqlens=cu_seqlens)
    check_float_dtypes(q=q, k=k, v=v, g=g, level_scales=level_scales)

    B, T, G, K = q.shape
    H, V, L = v.shape[2], v.shape[3], level_scales.shape[3]
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"k has shape {tuple(k.shape)} but q has {tuple(q.shape)}; both must be [B, T, G, K]")
    for dim, what in ((0, "batch size B"), (1, "sequence length T")):
        check_dim("v", v, dim, "q", q, what)
        check_dim("g", g, dim, "q", q, what)
        check_dim("level_scales", level_scales, dim, "q", q, what)
    check_dim("g", g, 2, "v", v, "heads H")
    check_dim("level_scales", level_scales, 2, "v", v, "heads H")
    for name, size in (("B", B), ("T", T), ("G", G), ("K", K), ("H", H), ("V", V), ("L", L)):
        if size < 1:
            raise ValueError(
                f"{name} must be >= 1, got shapes q {tuple(q.shape)}, v {tuple(v.shape)}, "
                f"level_scales {tuple(level_scales.shape)}"
            )
    check_heads(G, H, "q/k", "v")

    N = check_cu_seqlens(cu_seqlens, B, T)
    check_state("initial_state", initial_state, N, H, L, K, V, q.device)
    # Reading positions back would synchronise an accelerator, so only host tensors are screened.
    if (initial_state is not None and q.device.type == "cpu" and not torch.compiler.is_compiling()
            and bool((initial_state.positions < 0).any())):
        raise ValueError(f"initial_state.positions must be >= 0, got {initial_state.positions.tolist()}")
    return B, T, G, H, K, V, L, N


def check_log_linear_attn_decode_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None,
    cu_seqlens: torch.Tensor | None,
    inplace_final_state: bool,
) -> tuple[int, int, int, int, int, int, int, int]:
    """:func:`check_log_linear_attn_args` for the decoding op (eager and as ``torch.compile`` traces it),
    which also rejects inputs that require grad (it has no backward) and checks an in-place target.

    The state is checked without reading its positions back: a decode step must not synchronise.
    Returns ``(B, T, G, H, K, V, L, N)``.
    """
    dims = check_log_linear_attn_args(q, k, v, g, level_scales, None, cu_seqlens)
    H, K, V, L, N = dims[3:]
    check_state("initial_state", initial_state, N, H, L, K, V, q.device)
    if inplace_final_state:
        check_inplace_state(initial_state)
    if torch.is_grad_enabled() and any(
        x is not None and x.requires_grad
        for x in (q, k, v, g, level_scales, None if initial_state is None else initial_state.states)
    ):
        raise RuntimeError(
            "fused_recurrent_log_linear_attn is forward-only (decoding) and got inputs that require grad; "
            "use chunk_log_linear_attn for training or call it under torch.no_grad()"
        )
    return dims
