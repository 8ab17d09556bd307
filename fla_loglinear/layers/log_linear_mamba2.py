"""Log-linear Mamba-2: fla's Mamba2 layer with a Fenwick (log-linear) memory."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from fla.layers.mamba2 import Mamba2
from fla.layers.utils import get_layer_cache, get_unpad_indices_and_cu, index_first_axis, pad_input, update_layer_cache

from fla_loglinear.layers.level_scales import LogLinearMixin

if TYPE_CHECKING:
    from fla.models.cache_utils import Cache

__all__ = ["LogLinearMamba2"]


def _mask_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask[:, :, None].to(x.dtype)


class LogLinearMamba2(LogLinearMixin, Mamba2):
    """fla's :class:`~fla.layers.Mamba2` whose SSD memory is log-linear (Guo et al., 2025).

    Same ``in_proj`` / conv / ``dt`` / ``A`` / ``D`` / gated norm / ``out_proj`` as the parent (a stock
    checkpoint loads unchanged), plus ``level_proj`` giving per-token, per-head lambdas over
    ``num_levels`` Fenwick levels.  The SSD recurrence becomes the scalar-gated log-linear op with
    ``q = C``, ``k = B``, ``v = dt * x``, ``g = dt * A`` and ``scale = 1``; the cache holds the conv
    window ``[N, conv_dim, conv_kernel]`` and a :class:`~fla_loglinear.FenwickState`
    ``[N, num_heads, num_levels, state_size, head_dim]``.

    Unlike the parent, padded batches (``attention_mask``) are unpadded for the op, so each sequence
    starts at its own position 0, and cached calls may carry any number of new tokens (chunked
    prefill).  Group ``g`` of B/C serves heads ``[g * H / G, (g + 1) * H / G)`` (mamba_ssm's rule).

    Args:
        num_levels: lambdas per head (``L``); longer sequences than ``2 ** (L - 1)`` share the last.
        lambda_rank: bottleneck width of the ``lowrank`` lambda projection.
        lambda_init: ``"identity"`` (every lambda 1 at init: the layer equals its parent) or ``"random"``.
        lambda_form: ``"paper"`` (full-rank, Guo et al.; the default) or ``"lowrank"`` (bottleneck + bias).
        *args, **kwargs: :class:`~fla.layers.Mamba2`'s arguments.
    """

    _stock_class = Mamba2
    _lambda_heads = "num_heads"

    def _short_conv(self, xBC: torch.Tensor, conv_state: torch.Tensor | None, use_cache: bool):
        """Causal depthwise conv over ``[B, T, C]`` continuing the window ``conv_state`` (last inputs)."""
        K = self.conv_kernel_size
        x = xBC.transpose(1, 2)
        if conv_state is None and not use_cache:
            # training / uncached prefill: the conv's own zero padding, no zeros + cat launches
            out = F.conv1d(x, self.conv1d.weight, self.conv1d.bias, padding=K - 1, groups=self.conv_dim)
            return self.act(out[..., : x.shape[-1]]).transpose(1, 2), None
        history = conv_state[..., 1:].to(x) if conv_state is not None else x.new_zeros(*x.shape[:2], K - 1)
        window = torch.cat([history, x], dim=-1)
        out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        new_state = window[..., -K:].contiguous() if use_cache else None
        return self.act(out).transpose(1, 2), new_state

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        output_attentions: bool | None = False,
        **kwargs,
    ) -> tuple[torch.Tensor, None, Cache | None]:
        from fla_loglinear.ops.log_linear_attn import chunk_log_linear_attn, fused_recurrent_log_linear_attn

        if hidden_states.shape[1] == 0:
            return hidden_states, None, past_key_values
        self._check_attention_mask(attention_mask)
        if kwargs.get("cu_seqlens") is not None:
            raise NotImplementedError(
                "LogLinearMamba2 does not take cu_seqlens (nor does fla's Mamba2); "
                "pass a padded batch with attention_mask"
            )
        B, T, _ = hidden_states.shape
        H, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.ssm_state_size
        dtype = hidden_states.dtype
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        last_state = get_layer_cache(self, past_key_values)

        projected = self.in_proj(hidden_states)
        d_mlp = (projected.shape[-1] - 2 * self.intermediate_size - 2 * G * N - H) // 2
        _, _, gate, xBC, dt = projected.split([d_mlp, d_mlp, self.intermediate_size, self.conv_dim, H], dim=-1)

        # zeroed padding leaves a left-padded sequence's conv window as if it started fresh
        conv_state = last_state["conv_state"] if last_state is not None else None
        xBC, conv_state = self._short_conv(_mask_padding(xBC, mask), conv_state, use_cache)
        x, Bm, Cm = xBC.split([self.intermediate_size, G * N, G * N], dim=-1)
        x = x.reshape(B, T, H, P)

        dt = F.softplus(dt.float() + self.dt_bias.float())
        if tuple(self.dt_limit) != (0.0, float("inf")):
            dt = dt.clamp(self.dt_limit[0], self.dt_limit[1])
        q = Cm.reshape(B, T, G, N)
        k = Bm.reshape(B, T, G, N)
        v = (x * dt[..., None]).to(x.dtype)
        g = -torch.exp(self.A_log.float()) * dt
        level_scales = self.level_proj(hidden_states)

        indices = cu_seqlens = None
        if mask is not None:
            indices, cu_seqlens = get_unpad_indices_and_cu(attention_mask, T)
            q, k, v, g, level_scales = (
                index_first_axis(rearrange(t, "b t ... -> (b t) ..."), indices).unsqueeze(0)
                for t in (q, k, v, g, level_scales)
            )
        initial_state = last_state["recurrent_state"] if last_state is not None else None
        op, extra = self._pick_op(T == 1 and not torch.is_grad_enabled(), chunk_log_linear_attn,
                                  fused_recurrent_log_linear_attn, initial_state)
        y, recurrent_state = op(
            q, k, v, g, level_scales,
            initial_state=initial_state,
            output_final_state=use_cache,
            cu_seqlens=cu_seqlens,
            scale=1.0,
            **extra,
        )
        if indices is not None:
            y = pad_input(y.squeeze(0), indices, B, T)

        y = y + x * self._get_D(expand_to_head_dim=True).to(x.dtype)
        y = y.reshape(B, T, -1)
        y = self.norm(y, gate) if self.rmsnorm else y * self.act(gate)
        out = self.out_proj(y.to(dtype))

        update_layer_cache(self, past_key_values, recurrent_state=recurrent_state, conv_state=conv_state, offset=T)
        return out, None, past_key_values
