"""The two lambda forms of LevelScaleProjection ("lowrank", "paper") and the config field that picks one (CPU)."""
from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fla_loglinear.patches as patches
from fla_loglinear.layers import LevelScaleProjection, LogLinearGatedDeltaNet, LogLinearMamba2
from tests.layers.tiny_models import VOCAB, build, cpu_patched, mixers, randomize_lambdas, tiny_config

FAMILIES = ["gdn", "mamba2"]
LAYER = {"gdn": LogLinearGatedDeltaNet, "mamba2": LogLinearMamba2}


@pytest.fixture(scope="module", autouse=True)
def cpu_paths():
    with cpu_patched():
        yield


def test_paper_form_parameters_and_shapes():
    proj = LevelScaleProjection(24, 3, 7, lambda_rank=5, lambda_form="paper")
    shapes = {n: tuple(p.shape) for n, p in proj.named_parameters()}
    # full rank, no bottleneck, no bias
    assert shapes == {"weight": (21, 24), "level_scale": (3, 7)}
    lam = proj(torch.randn(2, 9, 24))
    assert lam.shape == (2, 9, 3, 7) and lam.dtype == torch.float32
    assert torch.equal(proj.level_scale, torch.ones(3, 7))
    assert "lambda_form='paper'" in repr(proj) and "lambda_rank" not in repr(proj)


@pytest.mark.parametrize("form", ["lowrank", "paper"])
def test_no_weight_decay_flags_survive_a_meta_build(form):
    with torch.device("meta"):
        proj = LevelScaleProjection(16, 2, 4, lambda_rank=3, lambda_form=form)
    proj.to_empty(device="cpu")
    proj.reset_parameters()
    flagged = {n for n, p in proj.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert flagged == ({"level_scale"} if form == "paper" else {"level_scale", "level_bias"})
    # the intended init, not to_empty's garbage
    assert torch.equal(proj.level_scale, torch.ones(2, 4))
    lam = proj(torch.randn(3, 16))
    assert torch.equal(lam, torch.ones_like(lam))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paper_identity_init_gives_exactly_one(dtype):
    proj = LevelScaleProjection(24, 3, 7, lambda_rank=5, lambda_init="identity", lambda_form="paper").to(dtype)
    lam = proj(torch.randn(2, 9, 24, dtype=dtype) * 3)
    assert lam.dtype == torch.float32 and torch.equal(lam, torch.ones_like(lam))


def test_paper_formula_against_float64():
    proj = LevelScaleProjection(24, 3, 7, lambda_rank=5, lambda_init="random", lambda_form="paper")
    with torch.no_grad():
        proj.level_scale.normal_()
    x = torch.randn(2, 9, 24)
    d = (x.double() @ proj.weight.double().T).view(2, 9, 3, 7)
    ref = F.softplus(proj.level_scale.double() * d) / math.log(2.0)
    lam = proj(x)
    assert lam.std() > 0.05
    torch.testing.assert_close(lam.double(), ref, rtol=1e-5, atol=1e-6)


def test_paper_random_init_is_drawn_and_identity_learns():
    torch.manual_seed(3)
    random = LevelScaleProjection(64, 2, 4, lambda_rank=3, lambda_init="random", lambda_form="paper")
    assert abs(random.weight.std().item() - 64 ** -0.5) < 0.3 * 64 ** -0.5
    proj = LevelScaleProjection(16, 2, 4, lambda_rank=3, lambda_form="paper")
    proj(torch.randn(5, 16)).square().sum().backward()
    assert proj.weight.grad.abs().sum() > 0


def test_bad_form_names_the_option_and_the_config_field():
    with pytest.raises(ValueError, match="lambda_form.*'paper'.*got 'full'"):
        LevelScaleProjection(8, 2, 3, lambda_rank=3, lambda_form="full")
    with pytest.raises(ValueError, match="lambda_form"):
        LogLinearMamba2.from_stock(build("mamba2").backbone.layers[0].mixer, lambda_form="Paper")
    with pytest.raises(ValueError, match="config field log_linear_lambda_form: .*got 'full'"):
        tiny_config("gdn", log_linear=True, log_linear_lambda_form="full")
    with pytest.raises(ValueError, match="config field log_linear_lambda_init"):
        tiny_config("mamba2", log_linear=True, log_linear_lambda_init="zeros")
    with pytest.raises(ValueError, match="lambda_form"):
        patches.convert(build("gdn"), lambda_form="")


@pytest.mark.parametrize("family", FAMILIES)
def test_from_config_builds_the_paper_form_at_identity(family):
    """fla's post_init re-draws nn.Linear weights: the paper form's W must stay 0 through it."""
    model = build(family, log_linear=True, log_linear_levels=5, log_linear_lambda_form="paper")
    for mixer in mixers(model):
        assert type(mixer) is LAYER[family] and mixer.level_proj.lambda_form == "paper"
        assert torch.equal(mixer.level_proj.weight, torch.zeros_like(mixer.level_proj.weight))
    stock = build(family)
    x = torch.randint(1, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, stock(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_form_save_pretrained_round_trip(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build(family, log_linear=True, log_linear_levels=5, log_linear_lambda_form="paper").eval()
    randomize_lambdas(model, seed=1)
    model.save_pretrained(tmp_path)
    saved = json.load(open(os.path.join(tmp_path, "config.json")))
    assert saved["log_linear_lambda_form"] == "paper"
    x = torch.randint(1, VOCAB, (2, 17))
    with torch.no_grad():
        ref = model(x).logits
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.log_linear_lambda_form == "paper"
    assert all(m.level_proj.lambda_form == "paper" for m in mixers(loaded))
    sd, ref_sd = loaded.state_dict(), model.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    assert any(k.endswith("level_proj.weight") for k in sd) and not any("weight_out" in k for k in sd)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref, rtol=1e-5, atol=1e-6)


def test_config_without_the_form_field_loads_as_lowrank(tmp_path):
    """Checkpoints written before log_linear_lambda_form existed keep meaning the low-rank form."""
    from transformers import AutoModelForCausalLM

    model = build("gdn", log_linear=True, log_linear_levels=5, log_linear_lambda_form="lowrank")
    model.save_pretrained(tmp_path)
    path = os.path.join(tmp_path, "config.json")
    saved = json.load(open(path))
    assert saved.pop("log_linear_lambda_form") == "lowrank"
    json.dump(saved, open(path, "w"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(m.level_proj.lambda_form == "lowrank" for m in mixers(loaded))


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_with_the_paper_form(family):
    stock = build(family).eval()
    model = patches.convert(copy.deepcopy(stock), num_levels=5, lambda_form="paper")
    assert model.config.log_linear_lambda_form == "paper" and model.config.to_dict()["log_linear_lambda_form"] == "paper"
    assert all(type(m) is LAYER[family] and m.level_proj.lambda_form == "paper" for m in mixers(model))
    x = torch.randint(1, VOCAB, (2, 17))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, stock(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_form_is_the_papers_and_a_given_rank_means_lowrank(family):
    """New models get the paper form; a rank without a form (old checkpoints, or a user asking for a
    bottleneck width) selects the low-rank form, in configs and in convert() alike."""
    assert mixers(build(family, log_linear=True, log_linear_levels=5))[0].level_proj.lambda_form == "paper"
    ranked = build(family, log_linear=True, log_linear_levels=5, log_linear_lambda_rank=4)
    assert ranked.config.log_linear_lambda_form == "lowrank"
    assert all(m.level_proj.lambda_form == "lowrank" and m.level_proj.lambda_rank == 4 for m in mixers(ranked))
    explicit = build(family, log_linear=True, log_linear_levels=5, log_linear_lambda_rank=4,
                     log_linear_lambda_form="paper")
    assert explicit.config.log_linear_lambda_form == "paper"
    assert patches.convert(build(family), num_levels=5).config.log_linear_lambda_form == "paper"
    converted = patches.convert(build(family), num_levels=5, lambda_rank=4)
    assert converted.config.log_linear_lambda_form == "lowrank"
    assert all(m.level_proj.lambda_form == "lowrank" for m in mixers(converted))
