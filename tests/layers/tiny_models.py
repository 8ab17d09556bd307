"""Tiny fla model configs and helpers shared by the layer, model and generation tests."""
from __future__ import annotations

import contextlib

import torch

VOCAB = 64


def tiny_config(family: str, **overrides):
    """A two-layer fla config small enough for the CPU (``family``: ``"gdn"`` or ``"mamba2"``)."""
    from fla.models import GatedDeltaNetConfig, Mamba2Config

    if family == "gdn":
        kw = dict(hidden_size=32, num_heads=2, head_dim=16, expand_v=1, num_hidden_layers=2, vocab_size=VOCAB,
                  fuse_cross_entropy=False, pad_token_id=0)
        kw.update(overrides)
        return GatedDeltaNetConfig(**kw)
    if family == "mamba2":
        kw = dict(hidden_size=32, head_dim=16, state_size=16, num_hidden_layers=2, vocab_size=VOCAB,
                  fuse_cross_entropy=False, chunk_size=16, pad_token_id=0)
        kw.update(overrides)
        return Mamba2Config(**kw)
    raise ValueError(family)


def mixers(model) -> list:
    """The sequence mixers of an fla Gated DeltaNet / Mamba-2 model, in layer order."""
    base = getattr(model, "model", None) or getattr(model, "backbone", None) or model
    return [getattr(block, "attn", None) or block.mixer for block in base.layers]


def randomize_lambdas(model, seed: int = 0, std: float = 0.5) -> None:
    """Give every lambda projection non-trivial weights, so lambdas differ per token, head and level."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".level_proj." in name or name.startswith("level_proj."):
                p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if name.endswith("level_scale") else 0.0))


@contextlib.contextmanager
def cpu_patched():
    """``fla_loglinear.patch(cpu=True)`` for the duration; unpatched after, unless it was patched before."""
    import fla_loglinear.patches as patches

    was = patches.is_patched()
    patches.patch(cpu=True)
    try:
        yield
    finally:
        if not was:
            patches.unpatch()


def build(family: str, seed: int = 0, **overrides):
    """A seeded tiny fla causal LM of ``family`` (``tiny_config`` with ``overrides``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
