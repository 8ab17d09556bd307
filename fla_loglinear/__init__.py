"""Log-linear attention (Guo et al., arXiv 2506.04761) for flash-linear-attention."""
from fla_loglinear.levels import clamp_level, level, num_levels
from fla_loglinear.patches import convert, patch, unpatch
from fla_loglinear.state import FenwickState

__version__ = "0.1.0"

__all__ = ["patch", "unpatch", "convert", "FenwickState", "level", "num_levels", "clamp_level", "__version__"]
