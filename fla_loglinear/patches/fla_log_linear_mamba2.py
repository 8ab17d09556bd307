"""Routes fla's own LogLinearMamba2 model (fla.layers.log_linear_mamba2) to our scalar op.

fla's ``chunk_log_linear_attn`` has no backend dispatch point, so the name the layer module
calls is rebound (and put back by unpatch).  fla's op defaults to ``scale=1.0`` where ours
defaults to ``K ** -0.5``: the adapter keeps fla's meaning and always passes the scale.
"""
from __future__ import annotations

import torch

from fla_loglinear.ops.checks import updatable_in_place
from fla_loglinear.state import FenwickState

__all__ = ["fla_chunk_log_linear_attn"]

# the module whose global name is rebound, and that name
TARGET = ("fla.layers.log_linear_mamba2", "chunk_log_linear_attn")


def fla_chunk_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state: FenwickState | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    scale: float | None = 1.0,
) -> tuple[torch.Tensor, FenwickState | None]:
    """fla's ``chunk_log_linear_attn`` signature and defaults, computed by our ops.

    Shapes as fla's: q, k ``[B, T, G, K]``, v ``[B, T, H, V]``, g ``[B, T, H]``,
    level_scales ``[B, T, H, L]``; the state is a :class:`~fla_loglinear.FenwickState`
    (fla's ``LogLinearAttentionState`` cannot be continued).  Single-token calls (fla's decode
    step) take the recurrent op.
    """
    from fla_loglinear.ops.log_linear_attn import chunk_log_linear_attn, fused_recurrent_log_linear_attn

    if initial_state is not None and not isinstance(initial_state, FenwickState):
        raise TypeError(
            f"initial_state is a {type(initial_state).__name__} (fla's own log-linear state, made before "
            "fla_loglinear.patch()); the patched LogLinearMamba2 continues only FenwickState: restart the sequence"
        )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if q.shape[1] == 1 and not torch.is_grad_enabled():
        # the cache's state is ours alone: decode into it (see inplace_final_state)
        return fused_recurrent_log_linear_attn(
            q, k, v, g, level_scales, initial_state=initial_state, output_final_state=output_final_state,
            cu_seqlens=cu_seqlens, scale=scale, inplace_final_state=updatable_in_place(initial_state),
        )
    return chunk_log_linear_attn(q, k, v, g, level_scales, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, scale=scale)
