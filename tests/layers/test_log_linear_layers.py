"""LogLinearGatedDeltaNet / LogLinearMamba2 layers and their lambda projection (CPU)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fla_loglinear import FenwickState
from fla_loglinear.layers import LevelScaleProjection, LogLinearGatedDeltaNet, LogLinearMamba2
from tests.layers.tiny_models import cpu_patched, randomize_lambdas


@pytest.fixture(scope="module", autouse=True)
def cpu_paths():
    # fla's norms / short convs are Triton-only: the layers need the CPU paths here
    with cpu_patched():
        yield


def make_layer(kind: str, seed: int = 0, n_groups: int = 2, **opts):
    from fla.layers import GatedDeltaNet, Mamba2

    torch.manual_seed(seed)
    if kind == "gdn":
        stock = GatedDeltaNet(hidden_size=32, head_dim=16, num_heads=2, num_v_heads=4, expand_v=1, layer_idx=0)
        cls = LogLinearGatedDeltaNet
    else:
        stock = Mamba2(hidden_size=32, head_dim=16, state_size=16, expand=2, n_groups=n_groups, layer_idx=0)
        cls = LogLinearMamba2
    # the low-rank form: these tests read its weights (the paper form's are in test_level_scales.py)
    opts = {"num_levels": 5, "lambda_rank": 4, "lambda_form": "lowrank", **opts}
    return cls.from_stock(copy.deepcopy(stock), **opts), stock


# ---------------------------------------------------------------- lambda projection

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_identity_init_gives_exactly_one(dtype):
    proj = LevelScaleProjection(24, 3, 7, lambda_rank=5, lambda_init="identity").to(dtype)
    lam = proj(torch.randn(2, 9, 24, dtype=dtype) * 3)
    assert lam.shape == (2, 9, 3, 7) and lam.dtype == torch.float32
    assert torch.equal(lam, torch.ones_like(lam))


def test_lambda_formula_against_float64():
    proj = LevelScaleProjection(24, 3, 7, lambda_rank=5, lambda_init="random", lambda_form="lowrank")
    with torch.no_grad():
        proj.level_scale.normal_()
        proj.level_bias.normal_()
    x = torch.randn(2, 9, 24)
    d = (x.double() @ proj.weight_in.double().T @ proj.weight_out.double().T).view(2, 9, 3, 7)
    ref = F.softplus(proj.level_scale.double() * d + proj.level_bias.double()) / math.log(2.0)
    lam = proj(x)
    assert lam.std() > 0.05  # lambdas really vary
    torch.testing.assert_close(lam.double(), ref, rtol=1e-5, atol=1e-6)


def test_identity_init_still_learns():
    proj = LevelScaleProjection(16, 2, 4, lambda_rank=3, lambda_form="lowrank")
    proj(torch.randn(5, 16)).square().sum().backward()
    assert proj.weight_out.grad.abs().sum() > 0


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="num_levels"):
        LevelScaleProjection(8, 2, 0, lambda_rank=3)
    with pytest.raises(ValueError, match="lambda_init"):
        LevelScaleProjection(8, 2, 3, lambda_rank=3, lambda_init="ones")
    from fla.layers import GatedDeltaNet
    with pytest.raises(TypeError, match="Mamba2"):
        LogLinearMamba2.from_stock(GatedDeltaNet(hidden_size=32, head_dim=16, num_heads=2, expand_v=1))


# ---------------------------------------------------------------- layers

@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
def test_identity_layer_equals_stock_layer(kind):
    # one B/C group: fla's CPU Mamba2 prefill maps heads to groups as h % G, its decode (and mamba_ssm) h // (H / G)
    layer, stock = make_layer(kind, n_groups=1)
    assert set(dict(stock.named_parameters())) < set(dict(layer.named_parameters()))
    h = torch.randn(2, 19, 32)
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :6] = 0  # left padding
    with torch.no_grad():
        ref = stock(h)[0]
        out = layer(h)[0]
        ref_pad = stock(h, attention_mask=mask)[0]
        out_pad = layer(h, attention_mask=mask)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_pad[mask.bool()], ref_pad[mask.bool()], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
def test_level_scales_reach_the_op(kind, monkeypatch):
    """The op gets lambda = softplus(scale * d + bias) / ln 2 per token, head, level (float64 formula)."""
    import fla_loglinear.ops.log_linear_attn as scalar_ops
    import fla_loglinear.ops.log_linear_gated_delta_rule as gdn_ops

    layer, _ = make_layer(kind)
    randomize_lambdas(layer)
    if kind == "gdn":
        module, name, position = gdn_ops, "chunk_log_linear_gated_delta_rule", 5
    else:
        module, name, position = scalar_ops, "chunk_log_linear_attn", 4
    seen = {}
    original = getattr(module, name)

    def spy(*args, **kwargs):
        seen["level_scales"] = kwargs["level_scales"] if "level_scales" in kwargs else args[position]
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    h = torch.randn(2, 11, 32)
    layer(h)
    p = layer.level_proj
    H = layer.num_v_heads if kind == "gdn" else layer.num_heads
    d = (h.double() @ p.weight_in.double().T @ p.weight_out.double().T).view(2, 11, H, 5)
    ref = F.softplus(p.level_scale.double() * d + p.level_bias.double()) / math.log(2.0)
    torch.testing.assert_close(seen["level_scales"].double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
def test_padded_batch_equals_each_sequence_alone(kind):
    layer, _ = make_layer(kind, lambda_init="random")
    randomize_lambdas(layer)
    lengths = [13, 6]
    seqs = [torch.randn(1, n, 32) for n in lengths]
    h = torch.zeros(2, 13, 32)
    mask = torch.zeros(2, 13, dtype=torch.long)
    for i, s in enumerate(seqs):
        h[i, 13 - s.shape[1]:] = s[0]
        mask[i, 13 - s.shape[1]:] = 1
    with torch.no_grad():
        out = layer(h, attention_mask=mask)[0]
        for i, s in enumerate(seqs):
            alone = layer(s)[0]
            torch.testing.assert_close(out[i, 13 - s.shape[1]:], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
def test_cached_pieces_equal_one_pass(kind):
    """Prefill in pieces, then single tokens, through fla's Cache == one uncached pass."""
    from fla.models.utils import Cache

    layer, _ = make_layer(kind, lambda_init="random")
    randomize_lambdas(layer)
    h = torch.randn(2, 21, 32)
    with torch.no_grad():
        full = layer(h)[0]
        cache = Cache()
        outs = []
        for a, b in [(0, 7), (7, 16), (16, 17), (17, 18), (18, 21)]:
            outs.append(layer(h[:, a:b], past_key_values=cache, use_cache=True)[0])
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-5)
    state = cache[0]["recurrent_state"]
    assert isinstance(state, FenwickState)
    assert state.positions.tolist() == [21, 21]
    assert state.states.shape[:3] == (2, layer.level_proj.num_heads, 5)


@pytest.mark.parametrize("kind", ["gdn", "mamba2"])
def test_backward_reaches_every_parameter(kind):
    layer, _ = make_layer(kind, lambda_init="random")
    layer.train()
    h = torch.randn(2, 12, 32, requires_grad=True)
    layer(h)[0].square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert layer.level_proj.weight_out.grad.abs().sum() > 0 and h.grad.abs().sum() > 0
