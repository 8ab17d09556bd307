"""Log-linear gated delta rule (Gated DeltaNet form): chunked and recurrent ops and their references."""
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk import chunk_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.fused_recurrent import fused_recurrent_log_linear_gated_delta_rule
from fla_loglinear.ops.log_linear_gated_delta_rule.naive import (
    naive_chunk_log_linear_gated_delta_rule,
    naive_quadratic_log_linear_gated_delta_rule,
    naive_recurrent_log_linear_gated_delta_rule,
)
from fla_loglinear.ops.log_linear_gated_delta_rule.pending import settle_pending

__all__ = [
    "chunk_log_linear_gated_delta_rule",
    "fused_recurrent_log_linear_gated_delta_rule",
    "naive_chunk_log_linear_gated_delta_rule",
    "naive_quadratic_log_linear_gated_delta_rule",
    "naive_recurrent_log_linear_gated_delta_rule",
    "settle_pending",
]
