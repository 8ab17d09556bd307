"""Argument checks of the gated delta rule (Gated DeltaNet) variant; every public op of it calls them first."""
from __future__ import annotations

import torch

from fla_loglinear.ops.checks import (
    check_cu_seqlens,
    check_dim,
    check_float_dtypes,
    check_heads,
    check_rank,
    check_same_device,
    check_state,
)
from fla_loglinear.state import FenwickState

__all__ = ["check_log_linear_gated_delta_rule_args"]


def check_log_linear_gated_delta_rule_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    cu_seqlens: torch.Tensor | None = None,
    pending: bool = False,
) -> tuple[int, int, int, int, int, int, int, int]:
    """Validates the inputs of a log-linear gated delta rule op before any work is done.

    Args:
        q, k: ``[B, T, H, K]``, one floating dtype shared with ``v``.
        v: ``[B, T, HV, V]`` with ``HV % H == 0`` (value head ``h`` reads q/k head ``h // (HV // H)``).
        g: ``[B, T, HV]`` per-token log gates.
        beta: ``[B, T, HV]`` delta-rule write strengths.
        level_scales: ``[B, T, HV, L]`` lambdas, indexed by the query position.
        initial_state: optional FenwickState with ``states [N, HV, L, K, V]`` and ``positions [N]``.
        cu_seqlens: optional ``[N + 1]`` packed offsets (then ``B == 1``).
        pending: the caller accepts a state with pending transitions (the public ops, which settle
            them or decode with them); the references do not.

    Returns:
        ``(B, T, H, HV, K, V, L, N)``.

    Raises ``TypeError`` / ``ValueError`` naming the argument and both shapes or dtypes.
    The sign of ``initial_state.positions`` is not checked here: that needs a host sync,
    which the GPU decode path must not pay on every step.
    """
    check_rank("q", q, 4, "[B, T, H, K]")
    check_rank("k", k, 4, "[B, T, H, K]")
    check_rank("v", v, 4, "[B, T, HV, V]")
    check_rank("g", g, 3, "[B, T, HV]")
    check_rank("beta", beta, 3, "[B, T, HV]")
    check_rank("level_scales", level_scales, 4, "[B, T, HV, L]")
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    L = level_scales.shape[3]
    for dim, what in enumerate(("B", "T", "H", "K")):
        check_dim("k", k, dim, "q", q, what)
    for dim, what in enumerate(("B", "T")):
        check_dim("v", v, dim, "q", q, what)
    for name, x in (("g", g), ("beta", beta), ("level_scales", level_scales)):
        for dim, what in enumerate(("B", "T", "HV")):
            check_dim(name, x, dim, "v", v, what)
    if T < 1:
        raise ValueError(f"q must hold at least one token, got T = 0 (shape {tuple(q.shape)})")
    for name, n in (("B", B), ("K", K), ("V", V), ("L", L), ("H", H)):
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}, "
                             f"level_scales {tuple(level_scales.shape)}")
    check_float_dtypes(q=q, k=k, v=v, g=g, beta=beta, level_scales=level_scales)
    check_same_device(q=q, k=k, v=v, g=g, beta=beta, level_scales=level_scales, cu_seqlens=cu_seqlens)
    check_heads(H, HV, qk_name="q/k", v_name="v")
    N = check_cu_seqlens(cu_seqlens, B, T)
    check_state("initial_state", initial_state, N, HV, L, K, V, q.device, pending=pending)
    return B, T, H, HV, K, V, L, N
