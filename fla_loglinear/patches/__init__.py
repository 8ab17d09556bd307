"""Switching fla's Mamba-2 and Gated DeltaNet models to log-linear attention.

``patch()`` / ``unpatch()`` / ``convert()`` live in :mod:`fla_loglinear.patches.models`; the CPU
paths of fla's Triton-only modules in :mod:`fla_loglinear.patches.cpu`.
"""
from fla_loglinear.patches.models import convert, is_patched, patch, unpatch

__all__ = ["patch", "unpatch", "convert", "is_patched"]
