"""patch() / unpatch() / convert(): fla's Mamba-2 and Gated DeltaNet models in log-linear mode (CPU)."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch

import fla_loglinear.patches as patches
from fla_loglinear.layers import LogLinearGatedDeltaNet, LogLinearMamba2
from tests.layers.tiny_models import VOCAB, build, mixers, randomize_lambdas, tiny_config

FAMILIES = ["gdn", "mamba2"]
LAYER = {"gdn": LogLinearGatedDeltaNet, "mamba2": LogLinearMamba2}


@pytest.fixture(autouse=True)
def patched():
    patches.patch(cpu=True)
    yield
    patches.patch(cpu=True)  # a test may have unpatched


@pytest.fixture(scope="module", autouse=True)
def restore_at_end():
    was = patches.is_patched()
    yield
    if not was:
        patches.unpatch()


def test_patch_is_idempotent_and_unpatch_restores_everything():
    import fla.layers.log_linear_mamba2 as fla_ll
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM, Mamba2Config, Mamba2ForCausalLM, Mamba2Model
    from fla.models.gated_deltanet.modeling_gated_deltanet import GatedDeltaNetBlock, GatedDeltaNetModel
    from fla.models.mamba2.modeling_mamba2 import Mamba2Block
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    patches.unpatch()
    owners = [GatedDeltaNetConfig, Mamba2Config, GatedDeltaNetBlock, Mamba2Block, GatedDeltaNetForCausalLM,
              GatedDeltaNetModel, Mamba2ForCausalLM, Mamba2Model]
    before = [dict(vars(cls)) for cls in owners]
    op_before = fla_ll.chunk_log_linear_attn
    extra_before = dict(CONFIG_MAPPING._extra_content)
    patches.patch()
    patches.patch()
    assert fla_ll.chunk_log_linear_attn is not op_before
    assert GatedDeltaNetBlock.__init__.__fla_loglinear_original__ is before[2]["__init__"]  # wrapped once
    assert isinstance(AutoConfig.for_model("fla_loglinear_mamba2"), Mamba2Config)
    patches.unpatch()
    patches.unpatch()
    for cls, saved in zip(owners, before):
        assert dict(vars(cls)) == saved, cls
    assert fla_ll.chunk_log_linear_attn is op_before
    assert dict(CONFIG_MAPPING._extra_content) == extra_before
    with pytest.raises(ValueError):
        AutoConfig.for_model("fla_loglinear_mamba2")


@pytest.mark.parametrize("family", FAMILIES)
def test_without_flag_the_stock_model_is_built(family):
    from fla.layers import GatedDeltaNet, Mamba2

    patched_model = build(family)
    cfg = tiny_config(family)
    assert cfg.log_linear is False and cfg.log_linear_levels == 21
    assert all(type(m) in (GatedDeltaNet, Mamba2) for m in mixers(patched_model))
    patches.unpatch()
    stock_model = build(family)
    stock_sd, patched_sd = stock_model.state_dict(), patched_model.state_dict()
    assert stock_sd.keys() == patched_sd.keys()
    assert all(torch.equal(stock_sd[k], patched_sd[k]) for k in stock_sd)


@pytest.mark.parametrize("family", FAMILIES)
def test_flag_builds_log_linear_mixers_whose_init_survives_init_weights(family):
    model = build(family, log_linear=True, log_linear_levels=6, log_linear_lambda_rank=8)
    for m in mixers(model):
        assert type(m) is LAYER[family] and m.num_levels == 6
        p = m.level_proj
        # fla's _init_weights re-draws nn.Linear weights with std initializer_range (0.02)
        assert torch.equal(p.weight_out, torch.zeros_like(p.weight_out))
        assert torch.equal(p.level_scale, torch.ones_like(p.level_scale))
        assert torch.equal(p.level_bias, torch.zeros_like(p.level_bias))
        assert abs(p.weight_in.std().item() - 32 ** -0.5) < 0.05
    lam = mixers(model)[0].level_proj(torch.randn(3, 5, 32))
    assert torch.equal(lam, torch.ones_like(lam))


def test_hybrid_gdn_keeps_softmax_layers(monkeypatch):
    import fla.layers.attn
    from fla.layers.attn import Attention

    # fla's softmax layer refuses to be built without flash-attn; only its construction is needed here
    monkeypatch.setattr(fla.layers.attn, "flash_attn_func", lambda *a, **k: None)
    model = build("gdn", log_linear=True, attn={"layers": [1], "num_heads": 2})
    kinds = [type(m) for m in mixers(model)]
    assert kinds == [LogLinearGatedDeltaNet, Attention]


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_stock_model_gives_stock_logits(family):
    stock = build(family).eval()
    ll = patches.convert(copy.deepcopy(stock))
    assert ll.config.log_linear and all(type(m) is LAYER[family] for m in mixers(ll))
    x = torch.randint(1, VOCAB, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(ll(x).logits, stock(x).logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="already"):
        patches.convert(ll)


def test_unsupported_models_and_options_raise_clearly():
    from fla.models import GatedDeltaNetConfig, LogLinearMamba2Config

    with pytest.raises(TypeError, match="Linear"):
        patches.convert(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="log_linear_levels"):
        GatedDeltaNetConfig(hidden_size=32, num_heads=2, head_dim=16, log_linear=True, log_linear_levels=0)
    with pytest.raises(ValueError, match="lambda_init"):
        tiny_config("mamba2", log_linear=True, log_linear_lambda_init="ones")
    with pytest.raises(ValueError, match="LogLinearMamba2Config"):
        LogLinearMamba2Config(hidden_size=32, head_dim=16, log_linear=True)
    with pytest.raises(ValueError, match="lambda_rank"):
        patches.convert(build("gdn"), lambda_rank=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_round_trip(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build(family, log_linear=True, log_linear_levels=7).eval()
    randomize_lambdas(model)
    model.save_pretrained(tmp_path)
    saved = json.load(open(os.path.join(tmp_path, "config.json")))
    assert saved["model_type"] == f"fla_loglinear_{'gated_deltanet' if family == 'gdn' else 'mamba2'}"
    assert saved["log_linear"] is True and saved["log_linear_levels"] == 7
    x = torch.randint(1, VOCAB, (2, 17))
    with torch.no_grad():
        ref = model(x).logits
    locked = "output_gate_activation" if family == "gdn" else "A_init_range"
    assert saved[locked]["value"] == json.loads(json.dumps(getattr(model.config, locked)))
    for loaded in (AutoModelForCausalLM.from_pretrained(tmp_path), type(model).from_pretrained(tmp_path)):
        assert loaded.config.log_linear and all(type(m) is LAYER[family] for m in mixers(loaded))
        assert getattr(loaded.config, locked) == saved[locked]["value"]  # unwrapped on load
        sd, ref_sd = loaded.state_dict(), model.state_dict()
        assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(x).logits, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_unpatched_loading_of_a_log_linear_checkpoint_fails(family, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    build(family, log_linear=True).save_pretrained(tmp_path)
    patches.unpatch()
    with pytest.raises(ValueError, match="fla_loglinear_"):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="fla_loglinear_"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    # fla's stock class loaded directly: its config rejects the locked field
    stock_class = type(build(family))
    with pytest.raises(ValueError, match="output_gate_activation|A_init_range"):
        stock_class.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_the_loss(family):
    model = build(family, log_linear=True, log_linear_lambda_init="random").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(1, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(4):
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "level_proj" in n)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def _param_counts(family: str, **options) -> tuple[int, int]:
    """(stock, log-linear) parameter counts at the paper's 21-layer, hidden 1536 shapes, built on meta."""
    from fla.models import GatedDeltaNetConfig, Mamba2Config
    from transformers import AutoModelForCausalLM

    if family == "gdn":
        kw = dict(hidden_size=1536, num_hidden_layers=21, num_heads=6, head_dim=192)
        make = GatedDeltaNetConfig
    else:
        kw = dict(hidden_size=1536, num_hidden_layers=21, head_dim=64, state_size=128, expand=2)
        make = Mamba2Config
    counts = []
    for flag in (False, True):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(make(**kw, log_linear=flag, **(options if flag else {})))
        counts.append(sum(p.numel() for p in model.parameters()))
    return counts[0], counts[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_added_parameters_are_the_lambda_projections(family):
    """Counted from the sizes alone: per layer, the paper form adds heads x levels x (hidden + 1) (its map
    and level_scale), the low-rank form rank x hidden + heads x levels x (rank + 2); the low-rank form
    stays under 3% of the model, the paper form at 21 levels costs more on Mamba-2's many heads."""
    layers, hidden, levels, rank = 21, 1536, 21, 32
    heads = 6 if family == "gdn" else 2 * hidden // 64
    stock, paper = _param_counts(family)
    assert paper - stock == layers * heads * levels * (hidden + 1)
    _, lowrank = _param_counts(family, log_linear_lambda_form="lowrank")
    assert lowrank - stock == layers * (rank * hidden + heads * levels * (rank + 2))
    assert (lowrank - stock) / stock < 0.03
    print(f"{family}: stock {stock / 1e6:.1f}M, paper form +{(paper - stock) / stock:.2%}, "
          f"low-rank +{(lowrank - stock) / stock:.2%}")


def _fla_naive_op(q, k, v, g, level_scales, initial_state=None, output_final_state=False, cu_seqlens=None,
                  scale=1.0):
    """fla's own definition of its op (its naive reference), standing in for the Triton kernel on the CPU."""
    from fla.ops.log_linear_attn.naive import naive_log_linear_attn

    assert initial_state is None and cu_seqlens is None
    o = naive_log_linear_attn(q.double(), k.double(), v.double(), g.double(), level_scales.double(), scale=scale)
    return o.to(v.dtype), None


def test_fla_log_linear_mamba2_is_routed_without_changing_its_outputs(monkeypatch):
    """fla's LogLinearMamba2ForCausalLM: the same logits through our op as through fla's definition."""
    import fla.layers.log_linear_mamba2 as fla_ll
    from fla.models import LogLinearMamba2Config
    from transformers import AutoModelForCausalLM

    assert fla_ll.chunk_log_linear_attn.__module__ == "fla_loglinear.patches.fla_log_linear_mamba2"
    torch.manual_seed(0)
    cfg = LogLinearMamba2Config(hidden_size=32, head_dim=16, state_size=16, num_hidden_layers=2, vocab_size=VOCAB,
                                fuse_cross_entropy=False)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for m in mixers(model):
            m.L.normal_(1.0, 0.5)  # non-trivial per-head, per-level scales
    x = torch.randint(1, VOCAB, (2, 40))
    with torch.no_grad():
        ours = model(x).logits
        monkeypatch.setattr(fla_ll, "chunk_log_linear_attn", _fla_naive_op)
        reference = model(x).logits
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Triton kernels)")
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_converted_model_gives_stock_logits_and_trains(family):
    stock = build(family).cuda().eval()
    ll = patches.convert(copy.deepcopy(stock))
    x = torch.randint(1, VOCAB, (2, 200), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ll(x).logits, stock(x).logits, rtol=2e-3, atol=2e-3)
    randomize_lambdas(ll)
    ll.train()
    opt = torch.optim.AdamW(ll.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = ll(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla's Triton kernel)")
def test_fla_log_linear_mamba2_outputs_unchanged_on_gpu():
    # last in the file: its unpatched half compiles fla's own log-linear kernel, which takes minutes
    from fla.models import LogLinearMamba2Config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = LogLinearMamba2Config(hidden_size=256, head_dim=64, state_size=64, num_hidden_layers=2, vocab_size=512)
    model = AutoModelForCausalLM.from_config(cfg).cuda().eval()
    x = torch.randint(1, 512, (2, 300), device="cuda")
    with torch.no_grad():
        ours = model(x).logits.float()
        patches.unpatch()
        fla = model(x).logits.float()
    torch.testing.assert_close(ours, fla, rtol=2e-3, atol=2e-3)
