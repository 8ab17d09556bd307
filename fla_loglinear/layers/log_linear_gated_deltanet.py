"""Log-linear Gated DeltaNet: fla's GatedDeltaNet layer with a Fenwick (log-linear) memory."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from einops import rearrange
from fla.layers.gated_deltanet import GatedDeltaNet
from fla.layers.utils import get_layer_cache, repad_hidden_states, unpad_hidden_states, update_layer_cache
from torch.nn import functional as F

from fla_loglinear.layers.level_scales import LogLinearMixin

if TYPE_CHECKING:
    from fla.models.cache_utils import Cache

__all__ = ["LogLinearGatedDeltaNet"]


class LogLinearGatedDeltaNet(LogLinearMixin, GatedDeltaNet):
    """fla's :class:`~fla.layers.GatedDeltaNet` whose memory is log-linear (Guo et al., 2025).

    Same projections, short convolutions, gates and output norm as the parent (a stock checkpoint
    loads unchanged), plus ``level_proj`` giving per-token, per-value-head lambdas over
    ``num_levels`` Fenwick levels.  The recurrent state in fla's ``Cache`` is a
    :class:`~fla_loglinear.FenwickState` (``[N, num_v_heads, num_levels, head_k_dim, head_v_dim]``).

    Args:
        num_levels: lambdas per head (``L``); longer sequences than ``2 ** (L - 1)`` share the last.
        lambda_rank: bottleneck width of the ``lowrank`` lambda projection.
        lambda_init: ``"identity"`` (every lambda 1 at init: the layer equals its parent) or ``"random"``.
        lambda_form: ``"paper"`` (full-rank, Guo et al.; the default) or ``"lowrank"`` (bottleneck + bias).
        *args, **kwargs: :class:`~fla.layers.GatedDeltaNet`'s arguments.

    Kernels: the chunked op for training and prefill, the recurrent op for single-token steps
    (and for ``mode="fused_recurrent"`` without gradients).
    """

    _stock_class = GatedDeltaNet
    _lambda_heads = "num_v_heads"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[torch.Tensor, None, Cache | None]:
        from fla_loglinear.ops.log_linear_gated_delta_rule import (
            chunk_log_linear_gated_delta_rule,
            fused_recurrent_log_linear_gated_delta_rule,
        )

        self._check_attention_mask(attention_mask)
        batch_size, q_len, _ = hidden_states.shape
        if torch.is_grad_enabled():
            mode = "chunk"
        elif q_len == 1:
            mode = "fused_recurrent"
        else:
            mode = self.mode

        last_state = get_layer_cache(module=self, past_key_values=past_key_values)
        # padding is removed (varlen), so every sequence starts at its own position 0
        hidden_states, indices, cu_seqlens = unpad_hidden_states(
            hidden_states=hidden_states,
            cu_seqlens=kwargs.get("cu_seqlens"),
            attention_mask=attention_mask,
            q_len=q_len,
        )

        conv_state = None
        if self.use_short_conv:
            conv_q, conv_k, conv_v = last_state["conv_state"] if last_state is not None else (None, None, None)
            q, conv_q = self.q_conv1d(x=self.q_proj(hidden_states), cache=conv_q,
                                      output_final_state=use_cache, cu_seqlens=cu_seqlens)
            k, conv_k = self.k_conv1d(x=self.k_proj(hidden_states), cache=conv_k,
                                      output_final_state=use_cache, cu_seqlens=cu_seqlens)
            v, conv_v = self.v_conv1d(x=self.v_proj(hidden_states), cache=conv_v,
                                      output_final_state=use_cache, cu_seqlens=cu_seqlens)
            conv_state = (conv_q, conv_k, conv_v)
        else:
            q = F.silu(self.q_proj(hidden_states))
            k = F.silu(self.k_proj(hidden_states))
            v = F.silu(self.v_proj(hidden_states))

        q, k = (rearrange(x, "... (h d) -> ... h d", d=self.head_k_dim) for x in (q, k))
        v = rearrange(v, "... (h d) -> ... h d", d=self.head_v_dim)

        initial_state = last_state["recurrent_state"] if last_state is not None else None
        op, extra = self._pick_op(mode == "fused_recurrent", chunk_log_linear_gated_delta_rule,
                                  fused_recurrent_log_linear_gated_delta_rule, initial_state)
        o, recurrent_state = op(
            q=q,
            k=k,
            v=v,
            g=self.a_proj(hidden_states),
            beta=self.b_proj(hidden_states),
            level_scales=self.level_proj(hidden_states),
            initial_state=initial_state,
            output_final_state=use_cache,
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=cu_seqlens,
            # the parent's in-kernel gate and beta, so a stock checkpoint means the same here
            use_gate_in_kernel=True,
            A_log=self.A_log,
            dt_bias=self.dt_bias,
            use_beta_sigmoid_in_kernel=True,
            allow_neg_eigval=self.allow_neg_eigval,
            **extra,
        )

        update_layer_cache(
            module=self,
            past_key_values=past_key_values,
            recurrent_state=recurrent_state,
            conv_state=conv_state,
            offset=q_len,
        )

        if self.use_gate:
            g = rearrange(self.g_proj(hidden_states), "... (h d) -> ... h d", d=self.head_v_dim)
            o = self.o_norm(o, g)
        else:
            o = self.o_norm(o)
        o = self.o_proj(rearrange(o, "b t h d -> b t (h d)"))
        o = repad_hidden_states(hidden_states=o, indices=indices, batch_size=batch_size, q_len=q_len)
        return o, None, past_key_values
