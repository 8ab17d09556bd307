"""Log-linear mixers: fla's Gated DeltaNet and Mamba-2 layers with a Fenwick memory."""
from fla_loglinear.layers.level_scales import LevelScaleProjection
from fla_loglinear.layers.log_linear_gated_deltanet import LogLinearGatedDeltaNet
from fla_loglinear.layers.log_linear_mamba2 import LogLinearMamba2

__all__ = ["LevelScaleProjection", "LogLinearGatedDeltaNet", "LogLinearMamba2"]
