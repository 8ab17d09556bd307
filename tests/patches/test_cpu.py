"""CPU paths for fla's Triton-only modules (fla_loglinear.patches.cpu).

Every CPU stand-in is compared against an independent float64 formula written here; the model tests
run with every Triton launch made to raise, so they prove that nothing reaches a Triton kernel.
"""
import inspect
import sys

import pytest
import torch
import torch.nn.functional as F

import fla.backends as fla_backends
from fla_loglinear.patches import cpu
from fla_loglinear.patches.cpu import patch_cpu, unpatch_cpu

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def patched():
    patch_cpu()
    yield
    unpatch_cpu()


@pytest.fixture
def no_triton(monkeypatch):
    """Make any Triton kernel launch (compiled or interpreted) fail."""
    import triton.runtime.interpreter as interpreter
    import triton.runtime.jit as jit

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"Triton kernel {getattr(self, '__name__', self)} launched on the CPU path")
    monkeypatch.setattr(jit.JITFunction, "run", refuse)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", refuse)


def close(actual, expected, atol=2e-5, rtol=2e-5):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


def grads_of(fn, *tensors, dy=None):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out = out[0] if isinstance(out, tuple) else out
    dy = torch.randn_like(out) if dy is None else dy
    out.backward(dy.to(out.dtype))
    return out.detach(), [t.grad for t in leaves], dy


def check_against(fn, ref, *tensors, atol=2e-5):
    """fn(float32 tensors) and ref(float64 tensors): same output and same input gradients."""
    out, grads, dy = grads_of(fn, *tensors)
    ref_out, ref_grads, _ = grads_of(ref, *(t.double() for t in tensors), dy=dy.double())
    close(out, ref_out, atol=atol, rtol=atol)
    for g, rg in zip(grads, ref_grads):
        close(g, rg, atol=atol, rtol=atol)


# ------------------------------------------------------------------ restore / idempotence

def _bindings(objs):
    """(module, name) -> object for every attribute of fla's loaded modules that is one of objs."""
    ids = {id(o) for o in objs}
    found = {}
    for module_name, module in list(sys.modules.items()):
        if module_name != "fla" and not module_name.startswith("fla."):
            continue
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            for name, value in list(namespace.items()):
                if id(value) in ids:
                    found[(module_name, name)] = value
    return found


def _snapshot():
    import importlib
    funcs = [getattr(importlib.import_module(m), a) for m, a, _ in cpu._SWITCHED]
    if fla_backends._DISPATCH_DISABLED:
        funcs += [getattr(importlib.import_module(m), a) for m, a, _ in cpu._DISPATCHED]
    methods = {}
    for m, c, a, _ in cpu._METHODS:
        cls = getattr(importlib.import_module(m), c)
        methods[(cls, a)] = cls.__dict__.get(a)
    registries = []
    if fla_backends._DISPATCH_DISABLED:
        funcs += [getattr(importlib.import_module(m), a) for _, fb in cpu._OPERATIONS.values() for m, a, _ in fb]
    else:
        registries = [fla_backends._function_registries[inspect.unwrap(getattr(importlib.import_module(m), a))]
                      for m, a, _ in cpu._DISPATCHED]
        registries += [fla_backends._load_operation_registry(op) for op in cpu._OPERATIONS]
    return _bindings(funcs), methods, [(r, dict(r._backends)) for r in registries]


def test_unpatch_restores_every_original():
    was_patched = cpu.is_cpu_patched()
    unpatch_cpu()
    bindings, methods, registries = _snapshot()
    assert len(bindings) >= len(cpu._SWITCHED)
    # a user's module that imported fla functions before patching keeps its own bindings throughout
    import types
    user = types.ModuleType("user_module_for_test")
    user_names = {f"f{i}": original for i, original in enumerate(bindings.values())}
    vars(user).update(user_names)
    sys.modules[user.__name__] = user
    patch_cpu()
    patch_cpu()  # idempotent
    assert cpu.is_cpu_patched()
    for (module_name, name), original in bindings.items():
        assert vars(sys.modules[module_name])[name] is not original, (module_name, name)
    for (cls, attr), original in methods.items():
        assert cls.__dict__.get(attr) is not original
    for registry, before in registries:
        assert registry._backends.get("cpu_torch") is not None
    assert all(vars(user)[n] is f for n, f in user_names.items())
    # an fla module that binds a switched name while patched is restored too
    late = types.ModuleType("fla.late_binder_for_test")
    late.fn = vars(sys.modules[cpu._SWITCHED[0][0]])[cpu._SWITCHED[0][1]]
    sys.modules[late.__name__] = late
    try:
        unpatch_cpu()
        unpatch_cpu()  # idempotent
        assert not cpu.is_cpu_patched()
        assert late.fn is next(v for (m, n), v in bindings.items() if n == cpu._SWITCHED[0][1])
        assert all(vars(user)[n] is f for n, f in user_names.items())
    finally:
        del sys.modules[late.__name__]
        del sys.modules[user.__name__]
    for (module_name, name), original in bindings.items():
        assert vars(sys.modules[module_name])[name] is original, (module_name, name)
    for (cls, attr), original in methods.items():
        assert cls.__dict__.get(attr) is original
    for registry, before in registries:
        assert registry._backends == before
        assert all(registry._backends[k] is v for k, v in before.items())
    if was_patched:
        patch_cpu()


# ------------------------------------------------------------------ norms

def _rms(x, w, eps):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * w


def _ln(x, w, b, eps):
    xc = x - x.mean(-1, keepdim=True)
    return xc * torch.rsqrt(xc.square().mean(-1, keepdim=True) + eps) * w + b


def test_rms_norm_prenorm_residual(patched, no_triton):
    from fla.modules import RMSNorm
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x, r = torch.randn(2, 7, 48), torch.randn(2, 7, 48)

    def fn(x, r):
        y, res = norm(x, residual=r, prenorm=True)
        return y + 0.5 * res

    def ref(x, r):
        s = x + r
        return _rms(s, norm.weight.detach().double(), 1e-5) + 0.5 * s
    check_against(fn, ref, x, r)
    # the weight gradient as well
    w_ref = norm.weight.detach().double().requires_grad_()
    dy = torch.randn(2, 7, 48)
    norm.weight.grad = None
    norm(x).backward(dy)
    _rms(x.double(), w_ref, 1e-5).backward(dy.double())
    close(norm.weight.grad, w_ref.grad)


def test_layer_norm_and_group_norm(patched, no_triton):
    from fla.modules import GroupNorm, LayerNorm
    torch.manual_seed(1)
    ln = LayerNorm(32, bias=True, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(32))
        ln.bias.copy_(torch.randn(32))
    x = torch.randn(3, 5, 32)
    check_against(ln, lambda x: _ln(x, ln.weight.detach().double(), ln.bias.detach().double(), 1e-5), x)
    gn = GroupNorm(4, 32, eps=1e-5, is_rms_norm=True)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(32))

    def gref(x):
        xg = x.view(*x.shape[:-1], 4, 8)
        return (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + 1e-5)).view(x.shape) * gn.weight.detach().double()
    check_against(gn, gref, x)


@pytest.mark.parametrize("activation", ["swish", "sigmoid"])
def test_fused_rms_norm_gated(patched, no_triton, activation):
    from fla.modules import FusedRMSNormGated
    torch.manual_seed(2)
    norm = FusedRMSNormGated(24, eps=1e-5, activation=activation)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(24))
    x, g = torch.randn(2, 6, 3, 24), torch.randn(2, 6, 3, 24)
    act = F.silu if activation == "swish" else torch.sigmoid
    check_against(norm, lambda x, g: _rms(x, norm.weight.detach().double(), 1e-5) * act(g), x, g)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_mamba_rms_norm_gated(patched, no_triton, norm_before_gate):
    from fla.modules.layernorm_gated import RMSNormGated, rmsnorm_fn
    torch.manual_seed(3)

    def ref(x, z, w):
        h = x if norm_before_gate else x * F.silu(z)
        hg = h.view(*h.shape[:-1], 2, 16)
        out = (hg * torch.rsqrt(hg.square().mean(-1, keepdim=True) + 1e-5)).view(h.shape) * w
        return out * F.silu(z) if norm_before_gate else out

    def fn(x, z, w):
        return rmsnorm_fn(x, w, None, z=z, eps=1e-5, group_size=16, norm_before_gate=norm_before_gate)
    x, z, w = torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(32)
    check_against(fn, ref, x, z, w)
    norm = RMSNormGated(32, eps=1e-5, group_size=16, norm_before_gate=norm_before_gate)
    close(norm(x, z), ref(x.double(), z.double(), torch.ones(32, dtype=torch.float64)))


def test_l2norm(patched, no_triton):
    from fla.modules.l2norm import l2norm
    torch.manual_seed(4)
    check_against(lambda x: l2norm(x), lambda x: x / torch.sqrt(x.square().sum(-1, keepdim=True) + 1e-6),
                  torch.randn(3, 4, 16))


# ------------------------------------------------------------------ activations

def test_swiglu_and_swiglu_linear(patched, no_triton):
    from fla.modules.activations import swiglu, swiglu_linear
    torch.manual_seed(5)
    a, b = torch.randn(4, 6, 20), torch.randn(4, 6, 20)
    check_against(swiglu, lambda a, b: F.silu(a) * b, a, b)
    w, bias = torch.randn(12, 20), torch.randn(12)
    check_against(swiglu_linear, lambda a, b, w, bias: F.linear(F.silu(a) * b, w, bias), a, b, w, bias)


@pytest.mark.parametrize("name", ["swish", "sigmoid", "logsigmoid"])
def test_act2fn(patched, no_triton, name):
    from fla.modules.activations import ACT2FN
    refs = {"swish": F.silu, "sigmoid": torch.sigmoid, "logsigmoid": F.logsigmoid}
    torch.manual_seed(6)
    check_against(ACT2FN[name], refs[name], torch.randn(5, 9) * 3)


# ------------------------------------------------------------------ short convolution

def _conv_ref(x, weight, bias, h0):
    """float64 causal depthwise conv + silu; h0 [B, D, W] holds the W previous inputs, newest last."""
    B, T, D = x.shape
    W = weight.shape[-1]
    hist = h0[..., 1:] if h0 is not None else x.new_zeros(B, D, W - 1)
    xs = torch.cat([hist, x.transpose(1, 2)], dim=2)
    y = F.conv1d(xs, weight.view(D, 1, W), bias, groups=D)
    return F.silu(y).transpose(1, 2)


def test_short_convolution(patched, no_triton):
    from fla.modules import ShortConvolution
    torch.manual_seed(7)
    conv = ShortConvolution(hidden_size=12, kernel_size=4, bias=True, activation="silu")
    w, bias = conv.weight.detach().view(12, 4), conv.bias.detach()
    x, h0 = torch.randn(2, 9, 12), torch.randn(2, 12, 4)

    def fn(x, h0):
        return conv(x, cache=h0, output_final_state=True)[0]
    check_against(fn, lambda x, h0: _conv_ref(x, w.double(), bias.double(), h0), x, h0)
    # final state: the last four inputs, from the cache when the sequence is shorter
    _, ht = conv(x, cache=h0, output_final_state=True)
    close(ht, x[:, -4:].transpose(1, 2))
    _, ht = conv(x[:, :2], cache=h0, output_final_state=True)
    close(ht, torch.cat([h0[..., 2:], x[:, :2].transpose(1, 2)], dim=2))
    # parameter gradients
    dy = torch.randn(2, 9, 12)
    conv.zero_grad()
    conv(x)[0].backward(dy)
    w64, b64 = w.double().requires_grad_(), bias.double().requires_grad_()
    _conv_ref(x.double(), w64, b64, None).backward(dy.double())
    close(conv.weight.grad.view(12, 4), w64.grad)
    close(conv.bias.grad, b64.grad)
    # token-by-token decoding equals the full pass, and updates the cache in place
    with torch.no_grad():
        full = conv(x)[0]
        cache = torch.zeros(2, 12, 4)
        steps = [conv(x[:, t:t + 1], cache=cache, output_final_state=True)[0] for t in range(9)]
    close(torch.cat(steps, dim=1), full)
    close(cache, x[:, -4:].transpose(1, 2))
    # packed sequences equal separate ones
    cu = torch.tensor([0, 4, 9])
    packed = conv(x[0:1], cu_seqlens=cu)[0]
    close(packed, torch.cat([conv(x[0:1, :4])[0], conv(x[0:1, 4:])[0]], dim=1))


# ------------------------------------------------------------------ cross entropy

@pytest.mark.parametrize("opts", [
    {},
    {"label_smoothing": 0.1, "logit_scale": 0.7, "lse_square_scale": 1e-3, "logit_softcapping": 5.0},
])
def test_fused_cross_entropy(patched, no_triton, opts):
    from fla.modules import FusedCrossEntropyLoss
    torch.manual_seed(8)
    N, V = 10, 17
    logits, target = torch.randn(N, V) * 3, torch.randint(0, V, (N,))
    target[[2, 7]] = -100
    crit = FusedCrossEntropyLoss(**opts)
    ls, scale = opts.get("label_smoothing", 0.0), opts.get("logit_scale", 1.0)
    zs, cap = opts.get("lse_square_scale", 0.0), opts.get("logit_softcapping")

    def ref(logits):
        x = logits * scale
        if cap is not None:
            x = cap * torch.tanh(x / cap)
        lse = torch.logsumexp(x, -1)
        valid = target != -100
        t = target.clamp(min=0)
        nll = lse - (1 - ls) * x.gather(1, t[:, None])[:, 0] - ls * x.mean(-1) + zs * lse ** 2
        return (nll * valid).sum() / valid.sum()
    check_against(lambda z: crit(z, target), ref, logits)


def test_fused_linear_cross_entropy(patched, no_triton):
    from fla.modules import FusedLinearCrossEntropyLoss
    torch.manual_seed(9)
    x, w, b = torch.randn(12, 16), torch.randn(30, 16) * 0.3, torch.randn(30)
    target = torch.randint(0, 30, (12,))
    check_against(lambda x, w, b: FusedLinearCrossEntropyLoss()(x, target, w, b),
                  lambda x, w, b: F.cross_entropy(F.linear(x, w, b), target), x, w, b)


# ------------------------------------------------------------------ gated delta rule

def _gdn_ref(q, k, v, g, beta, A_log, dt_bias, h0, scale, neg_eigval):
    """float64 token recurrence S_t = exp(g_t)(I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, o_t = scale S_t^T q_t,
    with fla's in-kernel options: l2-normalised q/k, gate -exp(A_log) softplus(g + dt_bias), sigmoid beta."""
    B, T, H, K = q.shape
    HV = v.shape[2]
    q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
    q, k = q.repeat_interleave(HV // H, 2), k.repeat_interleave(HV // H, 2)
    gate = -A_log.exp() * F.softplus(g + dt_bias)
    b = torch.sigmoid(beta) * (2 if neg_eigval else 1)
    S = h0.clone() if h0 is not None else q.new_zeros(B, HV, K, v.shape[-1])
    outs = []
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], b[:, t, :, None]
        S = S * gate[:, t].exp()[..., None, None]
        S = S + kt[..., None] * (bt * (vt - torch.einsum('bhk,bhkv->bhv', kt, S)))[..., None, :]
        outs.append(scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S))
    return torch.stack(outs, 1), S


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_gated_delta_rule_options(patched, no_triton, op):
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    fn = chunk_gated_delta_rule if op == "chunk" else fused_recurrent_gated_delta_rule
    torch.manual_seed(10)
    B, T, H, HV, K, V = 2, 11, 1, 2, 8, 4
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v, g, beta = torch.randn(B, T, HV, V), torch.randn(B, T, HV), torch.randn(B, T, HV)
    A_log, dt_bias, h0 = torch.rand(HV), torch.randn(HV), torch.randn(B, HV, V, K)

    def run(q, k, v, g, beta, A_log, dt_bias, h0, cu_seqlens=None):
        return fn(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True,
                  use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                  use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, state_v_first=True,
                  cu_seqlens=cu_seqlens)

    def ref(q, k, v, g, beta, A_log, dt_bias, h0):
        return _gdn_ref(q, k, v, g, beta, A_log, dt_bias, h0.transpose(-1, -2), K ** -0.5, True)
    tensors = (q, k, v, g, beta, A_log, dt_bias, h0)
    check_against(run, ref, *tensors, atol=5e-5)
    _, ht = run(*tensors)
    _, ref_ht = ref(*(t.double() for t in tensors))
    close(ht, ref_ht.transpose(-1, -2), atol=5e-5)
    # packed sequences: each with its own initial state
    cu = torch.tensor([0, 4, T])
    flat = [t[:1] for t in (q, k, v, g, beta)]
    o_packed, ht_packed = run(*flat, A_log, dt_bias, h0, cu_seqlens=cu)
    for n, (s, e) in enumerate([(0, 4), (4, T)]):
        o_n, ht_n = run(*(t[:, s:e] for t in flat), A_log, dt_bias, h0[n:n + 1])
        close(o_packed[:, s:e], o_n)
        close(ht_packed[n:n + 1], ht_n)


# ------------------------------------------------------------------ fla's log-linear attention op

def _log_linear_ref(q, k, v, g, lam, scale):
    B, T, G, K = q.shape
    H = v.shape[2]
    q, k = q.repeat_interleave(H // G, 2), k.repeat_interleave(H // G, 2)
    Gc = g.cumsum(1)
    o = torch.zeros_like(v)
    for t in range(T):
        for s in range(t + 1):
            lvl = (t ^ s).bit_length()
            w = lam[:, t, :, lvl] * torch.exp(Gc[:, t] - Gc[:, s]) * (q[:, t] * k[:, s]).sum(-1)
            o[:, t] += scale * w[..., None] * v[:, s]
    return o


def test_chunk_log_linear_attn_and_continuation(patched, no_triton):
    from fla.ops.log_linear_attn.chunk import chunk_log_linear_attn
    torch.manual_seed(11)
    B, T, G, H, K, V, L = 2, 13, 1, 2, 8, 4, 6
    q, k, v = torch.randn(B, T, G, K), torch.randn(B, T, G, K), torch.randn(B, T, H, V)
    g, lam = -torch.rand(B, T, H), torch.rand(B, T, H, L) + 0.5
    check_against(lambda *a: chunk_log_linear_attn(*a, scale=0.3), lambda *a: _log_linear_ref(*a, 0.3),
                  q, k, v, g, lam)
    full, _ = chunk_log_linear_attn(q, k, v, g, lam)
    o1, state = chunk_log_linear_attn(*(t[:, :5] for t in (q, k, v, g, lam)), output_final_state=True)
    pieces = [o1]
    for t in range(5, T):
        o_t, state = chunk_log_linear_attn(*(x[:, t:t + 1] for x in (q, k, v, g, lam)),
                                           initial_state=state, output_final_state=True)
        pieces.append(o_t)
    close(torch.cat(pieces, 1), full)


# ------------------------------------------------------------------ whole models

def _config(kind):
    from fla.models import GatedDeltaNetConfig, LogLinearMamba2Config, Mamba2Config
    common = dict(hidden_size=64, num_hidden_layers=2, vocab_size=64)
    if kind == "gated_deltanet":
        return GatedDeltaNetConfig(num_heads=2, head_dim=16, **common)
    if kind == "mamba2":
        return Mamba2Config(head_dim=16, state_size=16, expand=2, n_groups=1, chunk_size=16, **common)
    return LogLinearMamba2Config(num_heads=8, head_dim=16, state_size=16, expand=2, n_groups=1, **common)


MODELS = ["gated_deltanet", "mamba2", "log_linear_mamba2"]


@pytest.mark.parametrize("kind", MODELS)
def test_model_trains_on_cpu(patched, no_triton, kind):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(12)
    model = AutoModelForCausalLM.from_config(_config(kind))
    ids = torch.randint(0, 64, (2, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), name
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.05, losses
    # the fused (linear) cross entropy equals the plain one on the model's own logits
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
        logits = model(input_ids=ids).logits
    close(loss, F.cross_entropy(logits[:, :-1].reshape(-1, 64).double(), ids[:, 1:].reshape(-1)),
          atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_cached_forward_matches_full(patched, no_triton, kind):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(13)
    model = AutoModelForCausalLM.from_config(_config(kind)).eval()
    ids = torch.randint(0, 64, (2, 19))
    with torch.no_grad():
        full = model(input_ids=ids).logits
    # with autograd on, Gated DeltaNet takes its chunk op (and no cache is written)
    close(model(input_ids=ids).logits.detach(), full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        out = model(input_ids=ids[:, :11], use_cache=True)
        cache, pieces = out.past_key_values, [out.logits]
        for t in range(11, 19):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
    close(torch.cat(pieces, 1), full, atol=1e-4, rtol=1e-4)


def test_gated_deltanet_chunk_prefill_then_decode(patched, no_triton):
    """Prefill through the chunk op (autograd on) with a cache, then recurrent decoding."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(14)
    model = AutoModelForCausalLM.from_config(_config("gated_deltanet")).eval()
    ids = torch.randint(0, 64, (2, 15))
    with torch.no_grad():
        full = model(input_ids=ids).logits
    out = model(input_ids=ids[:, :9], use_cache=True)
    cache, pieces = out.past_key_values, [out.logits.detach()]
    with torch.no_grad():
        for t in range(9, 15):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
    close(torch.cat(pieces, 1), full, atol=1e-4, rtol=1e-4)


def test_gated_deltanet_left_padding(patched, no_triton):
    """A padded batch goes through fla's unpad / cu_seqlens path (varlen conv and delta rule)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(16)
    model = AutoModelForCausalLM.from_config(_config("gated_deltanet"))
    ids = torch.randint(0, 64, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    padded = model(input_ids=ids, attention_mask=mask).logits
    close(padded[0, 3:], model(input_ids=ids[:1, 3:]).logits[0], atol=1e-5, rtol=1e-5)
    close(padded[1], model(input_ids=ids[1:]).logits[0], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ GPU calls untouched

@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_calls_reach_fla_unchanged():
    from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    torch.manual_seed(15)
    dev = "cuda"
    norm, gnorm = RMSNorm(64).to(dev), FusedRMSNormGated(64).to(dev)
    conv = ShortConvolution(64, 4).to(dev)
    x, z = torch.randn(2, 70, 64, device=dev), torch.randn(2, 70, 64, device=dev)
    q, k = torch.randn(1, 70, 2, 64, device=dev), F.normalize(torch.randn(1, 70, 2, 64, device=dev), dim=-1)
    v, g = torch.randn(1, 70, 2, 64, device=dev), F.logsigmoid(torch.randn(1, 70, 2, device=dev))
    beta = torch.rand(1, 70, 2, device=dev)

    def run():
        return [norm(x), gnorm(x, z), conv(x)[0], chunk_gated_delta_rule(q, k, v, g, beta)[0]]
    was_patched = cpu.is_cpu_patched()
    unpatch_cpu()
    before = run()
    patch_cpu()
    after = run()
    if not was_patched:
        unpatch_cpu()
    for a, b in zip(before, after):
        assert torch.equal(a, b)
