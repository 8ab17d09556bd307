"""What flame does around the model: build on the meta device and materialise it, and checkpoint
activations per block."""
from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from fla_loglinear.layers.level_scales import DEFAULT_LAMBDA_RANK, LAMBDA_INITS
from tests.layers.tiny_models import VOCAB, cpu_patched, mixers, randomize_lambdas, tiny_config

FAMILIES = ["gdn", "mamba2"]


@pytest.fixture(autouse=True)
def patched():
    with cpu_patched():
        yield


def ids(B=2, T=40, seed=1):
    return torch.randint(1, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lambda_init", LAMBDA_INITS)
@pytest.mark.parametrize("form", ["paper", "lowrank"])
def test_meta_build_then_to_empty_and_post_init_keeps_the_lambda_init(family, lambda_init, form):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family, log_linear=True, log_linear_levels=4, log_linear_lambda_init=lambda_init,
                      log_linear_lambda_form=form)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.post_init()
    x = torch.randn(3, 5, cfg.hidden_size)
    for layer in mixers(model):
        proj = layer.level_proj
        assert proj.lambda_form == form
        assert torch.equal(proj.level_scale, torch.ones_like(proj.level_scale))
        if form == "paper":
            out, out_std = proj.weight, cfg.hidden_size ** -0.5
        else:
            assert torch.equal(proj.level_bias, torch.zeros_like(proj.level_bias))
            # weight_in is drawn with std hidden ** -0.5 at both inits (to_empty leaves garbage otherwise)
            assert proj.weight_in.std().item() == pytest.approx(cfg.hidden_size ** -0.5, rel=0.3)
            out, out_std = proj.weight_out, DEFAULT_LAMBDA_RANK ** -0.5
        lam = proj(x)
        if lambda_init == "identity":
            assert torch.equal(out, torch.zeros_like(out))
            assert torch.equal(lam, torch.ones_like(lam))
        else:
            assert out.std().item() == pytest.approx(out_std, rel=0.3)
            assert lam.std() > 0.05 and bool((lam > 0).all())
    logits = model(input_ids=ids()).logits
    assert torch.isfinite(logits).all()
    if lambda_init == "identity":
        # lambdas of 1: the log-linear model is its stock parent with the same weights
        stock = AutoModelForCausalLM.from_config(tiny_config(family))
        missing, unexpected = stock.load_state_dict(model.state_dict(), strict=False)
        assert missing == [] and all(".level_proj." in k for k in unexpected)
        torch.testing.assert_close(logits, stock(input_ids=ids()).logits, atol=2e-5, rtol=2e-5)


def _checkpoint_blocks(model) -> None:
    """Non-reentrant activation checkpointing of every block (what flame's per-block AC does)."""
    base = getattr(model, "model", None) or model.backbone
    for block in base.layers:
        forward = block.forward
        block.forward = lambda *args, _f=forward, **kwargs: checkpoint(_f, *args, use_reentrant=False, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_checkpointing_gives_the_same_gradients(family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, log_linear=True, log_linear_levels=4))
    randomize_lambdas(model)
    calls = []
    for layer in mixers(model):
        # a pre-hook: the recomputation stops early, once it has every saved tensor back
        layer.register_forward_pre_hook(lambda *_: calls.append(1))

    def grads():
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss = model(input_ids=ids(), labels=ids()).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    loss_ref, ref, n_ref = grads()
    _checkpoint_blocks(model)
    loss, got, n = grads()
    assert n == 2 * n_ref  # every mixer ran again in the backward: the checkpoints are in effect
    torch.testing.assert_close(loss, loss_ref, atol=0, rtol=0)
    assert got.keys() == ref.keys() and any(".level_proj." in k for k in ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
