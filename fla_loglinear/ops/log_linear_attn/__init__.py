"""Scalar-gated (Mamba-2 form) log-linear attention: Triton ops and PyTorch references."""
from fla_loglinear.ops.log_linear_attn.chunk import chunk_log_linear_attn
from fla_loglinear.ops.log_linear_attn.fused_recurrent import fused_recurrent_log_linear_attn
from fla_loglinear.ops.log_linear_attn.naive import (
    naive_chunk_log_linear_attn,
    naive_quadratic_log_linear_attn,
    naive_recurrent_log_linear_attn,
)

__all__ = [
    "chunk_log_linear_attn",
    "fused_recurrent_log_linear_attn",
    "naive_chunk_log_linear_attn",
    "naive_quadratic_log_linear_attn",
    "naive_recurrent_log_linear_attn",
]
