"""Log-linear attention ops, in fla's layout: ``<op>/{chunk,fused_recurrent,naive}.py``."""
from fla_loglinear.ops.log_linear_attn import chunk_log_linear_attn, fused_recurrent_log_linear_attn
from fla_loglinear.ops.log_linear_gated_delta_rule import (
    chunk_log_linear_gated_delta_rule,
    fused_recurrent_log_linear_gated_delta_rule,
)
# registers the custom ops that torch.compile sees (after the ops it wraps)
from fla_loglinear.ops import library  # noqa: E402,F401

__all__ = [
    "chunk_log_linear_attn",
    "fused_recurrent_log_linear_attn",
    "chunk_log_linear_gated_delta_rule",
    "fused_recurrent_log_linear_gated_delta_rule",
]
