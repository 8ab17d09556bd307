"""torch.compile of the log-linear models: whole model and per block (as flame does), forward and backward
equal to eager; graph breaks inside our layers; decoding under compile.

CPU cases use ``backend="aot_eager"`` (Dynamo + AOTAutograd, what decides graph breaks and runs the custom
ops' fake and autograd registrations) and one Inductor case per model; the CUDA cases compile with Inductor.
"""
from __future__ import annotations

import os
import re

import pytest
import torch

import fla_loglinear.patches as patches
from tests.layers.tiny_models import VOCAB, mixers, randomize_lambdas, tiny_config

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
FAMILIES = ["gdn", "mamba2"]
OP = {"gdn": "fla_loglinear.chunk_log_linear_gated_delta_rule.default",
      "mamba2": "fla_loglinear.chunk_log_linear_attn.default"}
PACKAGE = os.path.dirname(os.path.abspath(patches.__file__)).rsplit(os.sep, 1)[0]

# fla's own graph breaks inside one layer: fla.backends.dispatch wraps each dispatched kernel entry in
# torch.compiler.disable ("runtime backend selection must stay outside torch.compile graphs"), on every
# device.  Our layers call these through fla's modules (ShortConvolution, FusedRMSNormGated, the gated
# norm's swish).
FLA_BREAKS = {"gdn": {"causal_conv1d_fwd", "layer_norm_gated_fwd"}, "mamba2": {"swish_fwd"}}
# Our CPU stand-in for the backward of fla's gated group norm (patches/cpu_ops.py, CPU tensors only)
# differentiates its forward with torch.autograd.grad, which Dynamo does not trace; Dynamo meets it
# while speculating the norm's autograd.Function backward.  Not on the GPU path.
CPU_PATCH_BREAKS = {"gdn": set(), "mamba2": {"gated_group_norm_bwd"}}


@pytest.fixture(autouse=True)
def patched():
    was = patches.is_patched()
    patches.patch(cpu=True)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    if not was:
        patches.unpatch()


def build(family: str, device="cpu", seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    kw = dict(log_linear=True, log_linear_levels=4)
    kw.update(overrides)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(tiny_config(family, **kw))
    randomize_lambdas(model, seed=seed)
    return model.to(device)


def batch(seed: int = 1, B: int = 2, T: int = 40, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (B, T), generator=gen).to(device)


def loss_and_grads(model, forward, ids):
    model.zero_grad(set_to_none=True)
    loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ref, got, atol, rtol):
    (loss_r, grads_r), (loss_c, grads_c) = ref, got
    torch.testing.assert_close(loss_c, loss_r, atol=atol, rtol=rtol)
    assert grads_c.keys() == grads_r.keys()
    # the lambda projections get gradients only through the op's backward
    assert any(".level_proj." in n and grads_r[n].abs().max() > 0 for n in grads_r)
    for name in grads_r:
        torch.testing.assert_close(grads_c[name], grads_r[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def compile_blocks(model, **options):
    """Per-block compile as flame does it: each block module compiled in place."""
    base = getattr(model, "model", None) or model.backbone
    for block in base.layers:
        block.compile(**options)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_block", [False, True], ids=["model", "blocks"])
def test_compile_equals_eager(family, per_block):
    model = build(family)
    ids = batch()
    ref = loss_and_grads(model, model, ids)
    if per_block:
        compile_blocks(model, backend="aot_eager")
        forward = model
    else:
        forward = torch.compile(model, backend="aot_eager")
    assert_same(ref, loss_and_grads(model, forward, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_inductor_equals_eager(family):
    # Inductor's CPU code generation used to fail on the level arithmetic (convert<int64_t, 2, int32_t, 1>)
    model = build(family)
    ids = batch()
    ref = loss_and_grads(model, model, ids)
    assert_same(ref, loss_and_grads(model, torch.compile(model), ids), atol=1e-4, rtol=1e-4)


def _disabled_function(reason: str) -> str | None:
    found = re.search(r"function[ `<]+(?:function )?(\w+)", reason)
    return found.group(1) if found else None


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_breaks_in_a_layer_are_fla_own(family):
    layer = mixers(build(family))[0]
    explained = torch._dynamo.explain(layer)(torch.randn(2, 40, layer.hidden_size))
    ours, fla_own, cpu_patch = [], set(), set()
    for brk in explained.break_reasons:
        frame = brk.user_stack[-1]
        if frame.filename.endswith(os.path.join("fla_loglinear", "patches", "cpu_ops.py")):
            cpu_patch.add(frame.name)
        elif frame.filename.startswith(PACKAGE):
            ours.append((frame.filename, frame.lineno, brk.reason.splitlines()[0]))
        else:
            assert "torch.compiler.disable" in brk.reason, brk.reason
            fla_own.add(_disabled_function(brk.reason))
    assert ours == [], ours
    assert fla_own == FLA_BREAKS[family]
    assert cpu_patch == CPU_PATCH_BREAKS[family]
    # one node for the op: nothing of its level arithmetic reaches the graphs
    targets = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
    assert targets.count(OP[family]) == 1
    assert not any("bitwise" in t or "__and__" in t for t in targets), targets


def _decode(model, ids, steps):
    """Prefill ``ids`` with a cache, then ``steps`` greedy single-token steps; the logits of each step."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, logits = out.past_key_values, [out.logits[:, -1]]
        for _ in range(steps):
            token = logits[-1].argmax(-1, keepdim=True)
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_under_compile(family):
    model = build(family).eval()
    ids = batch(B=2, T=9)
    ref = _decode(model, ids, steps=3)
    got = _decode(torch.compile(model, backend="aot_eager"), ids, steps=3)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_block", [False, True], ids=["model", "blocks"])
def test_compile_equals_eager_cuda(family, per_block):
    # head dims of 64 take the fused Triton kernels (chunk-local GDN kernels need >= 32)
    sizes = dict(hidden_size=128, num_heads=2, head_dim=64) if family == "gdn" else dict(hidden_size=128, head_dim=32,
                                                                                           state_size=64)
    model = build(family, device="cuda", log_linear_levels=8, **sizes)
    ids = batch(B=2, T=512, device="cuda")
    ref = loss_and_grads(model, model, ids)
    if per_block:
        compile_blocks(model)
        forward = model
    else:
        forward = torch.compile(model)
    assert_same(ref, loss_and_grads(model, forward, ids), atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_under_compile_cuda(family):
    model = build(family, device="cuda").eval()
    ids = batch(B=2, T=9, device="cuda")
    ref = _decode(model, ids, steps=3)
    got = _decode(torch.compile(model), ids, steps=3)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
