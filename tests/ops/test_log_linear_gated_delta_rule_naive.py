"""The three PyTorch forms of the log-linear gated delta rule against each other and against fla."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
from fla_loglinear.levels import num_levels
from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.naive import (
    naive_chunk_log_linear_gated_delta_rule,
    naive_quadratic_log_linear_gated_delta_rule,
    naive_recurrent_log_linear_gated_delta_rule,
)
from fla_loglinear.state import FenwickState
from tests.ops.states import occupied_part

quadratic = naive_quadratic_log_linear_gated_delta_rule
recurrent = naive_recurrent_log_linear_gated_delta_rule
chunk = naive_chunk_log_linear_gated_delta_rule
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these are many tiny ops: on the shared 2-core machine OpenMP's second thread only adds waiting
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B, T, H, HV, K, V, L, seed, dtype=F64, device="cpu"):
    """Inputs that keep the delta rule stable: unit keys, beta in (0, 1), negative log gates."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    q = rnd(B, T, H, K)
    k = F.normalize(rnd(B, T, H, K), dim=-1)
    v = rnd(B, T, HV, V)
    g = F.logsigmoid(rnd(B, T, HV) + 2.0)
    beta = torch.sigmoid(rnd(B, T, HV))
    lam = torch.rand(B, T, HV, L, generator=gen, dtype=F64) + 0.5
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v, g, beta, lam))


def make_state(N, HV, L, K, V, positions, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(N, HV, L, K, V, generator=gen, dtype=F64).to(dtype)
    return FenwickState(states, torch.tensor(positions, dtype=torch.int64))


def assert_close(actual, expected, atol=1e-10, rtol=1e-8):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# (B, T, H, HV, K, V, L, chunk_size); L covers T (num_levels) or fewer (clamp rule)
SHAPES = [
    (2, 1, 1, 1, 4, 3, 1, 4),
    (1, 2, 1, 2, 4, 4, 2, 2),
    (2, 63, 2, 2, 8, 5, num_levels(63), 16),
    (1, 64, 1, 3, 8, 8, 3, 64),
    (2, 65, 2, 4, 4, 6, num_levels(65), 32),
    (1, 200, 1, 2, 16, 8, 5, 64),
    (2, 200, 1, 1, 8, 4, num_levels(200), 8),
]


@pytest.mark.parametrize("B,T,H,HV,K,V,L,C", SHAPES)
def test_three_forms_agree(B, T, H, HV, K, V, L, C):
    args = make_inputs(B, T, H, HV, K, V, L, seed=T * 7 + L)
    o_q, s_q = quadratic(*args, output_final_state=True)
    o_r, s_r = recurrent(*args, output_final_state=True)
    o_c, s_c = chunk(*args, output_final_state=True, chunk_size=C)
    assert o_q.abs().max() > 1e-3  # a degenerate all-zero comparison would prove nothing
    assert_close(o_r, o_q)
    assert_close(o_c, o_q)
    for s in (s_r, s_c):
        assert s.states.shape == (B, HV, L, K, V)
        assert_close(s.states, s_q.states)
        assert s.positions.tolist() == [T] * B


def test_long_sequence_clamped_levels():
    # T = 1000 with L = 4 < num_levels(1000): every coarse level shares lambda[3]
    args = make_inputs(1, 1000, 1, 2, 4, 4, 4, seed=11)
    o_q, s_q = quadratic(*args, output_final_state=True)
    o_r, s_r = recurrent(*args, output_final_state=True)
    o_c, s_c = chunk(*args, output_final_state=True, chunk_size=64)
    assert_close(o_r, o_q, atol=1e-9)
    assert_close(o_c, o_q, atol=1e-9)
    assert_close(s_r.states, s_q.states, atol=1e-9)
    assert_close(s_c.states, s_q.states, atol=1e-9)


def test_long_sequence_full_levels_chunk_vs_recurrent():
    T = 1000
    args = make_inputs(2, T, 1, 1, 4, 4, num_levels(T), seed=12)
    o_r, s_r = recurrent(*args, output_final_state=True)
    o_c, s_c = chunk(*args, output_final_state=True, chunk_size=32)
    assert_close(o_c, o_r, atol=1e-9)
    assert_close(s_c.states, s_r.states, atol=1e-9)


@pytest.mark.parametrize("prefix,C", [(1, 16), (37, 16), (70, 32), (101, 64)])
def test_chunk_from_recurrent_prefix_state(prefix, C):
    B, T, H, HV, K, V, L = 2, 150, 1, 2, 8, 4, 6
    args = make_inputs(B, T, H, HV, K, V, L, seed=prefix)
    o_q, s_q = quadratic(*args, output_final_state=True)
    _, state = recurrent(*(x[:, :prefix] for x in args), output_final_state=True)
    assert state.positions.tolist() == [prefix] * B
    o_c, s_c = chunk(*(x[:, prefix:] for x in args), initial_state=state, output_final_state=True, chunk_size=C)
    assert_close(o_c, o_q[:, prefix:])
    assert_close(s_c.states, s_q.states)
    assert s_c.positions.tolist() == [T] * B


@pytest.mark.parametrize("positions,L,C", [([5, 77, 0], 8, 16), ([1000, 3, 64], 4, 32), ([31, 2049, 127], 13, 64)])
def test_chunk_vs_recurrent_from_random_state(positions, L, C):
    B, T, H, HV, K, V = 3, 90, 2, 4, 8, 4
    args = make_inputs(B, T, H, HV, K, V, L, seed=L)
    state = make_state(B, HV, L, K, V, positions, seed=C)
    o_r, s_r = recurrent(*args, initial_state=state, output_final_state=True)
    o_c, s_c = chunk(*args, initial_state=state, output_final_state=True, chunk_size=C)
    assert_close(o_c, o_r)
    assert_close(s_c.states, s_r.states)
    assert s_c.positions.tolist() == s_r.positions.tolist() == [p + T for p in positions]


@pytest.mark.parametrize("form", ["recurrent", "chunk", "quadratic"])
def test_varlen_matches_per_sequence_loop(form):
    cu = torch.tensor([0, 3, 50, 51, 150, 180])
    N, HV, K, V, L = 5, 2, 8, 4, 7
    args = make_inputs(1, 180, 1, HV, K, V, L, seed=5)
    kwargs = {"output_final_state": True}
    if form == "quadratic":
        fn, state = quadratic, None
    else:
        fn = recurrent if form == "recurrent" else (lambda *a, **kw: chunk(*a, chunk_size=16, **kw))
        state = make_state(N, HV, L, K, V, [5, 77, 0, 1000, 16], seed=6)
        kwargs["initial_state"] = state
    o, s = fn(*args, cu_seqlens=cu, **kwargs)
    for n in range(N):
        bos, eos = cu[n].item(), cu[n + 1].item()
        kw = dict(kwargs)
        if state is not None:
            kw["initial_state"] = FenwickState(state.states[n:n + 1], state.positions[n:n + 1])
        o_n, s_n = fn(*(x[:, bos:eos] for x in args), **kw)
        assert_close(o[:, bos:eos], o_n)
        assert_close(s.states[n:n + 1], s_n.states)
        assert s.positions[n].item() == s_n.positions.item()


def test_varlen_chunk_vs_quadratic():
    cu = torch.tensor([0, 1, 64, 130, 131, 200])
    args = make_inputs(1, 200, 2, 2, 8, 8, 6, seed=8)
    o_q, s_q = quadratic(*args, cu_seqlens=cu, output_final_state=True)
    o_c, s_c = chunk(*args, cu_seqlens=cu, output_final_state=True, chunk_size=32)
    assert_close(o_c, o_q)
    assert_close(s_c.states, s_q.states)
    assert s_c.positions.tolist() == [1, 63, 66, 1, 69]


@pytest.mark.parametrize("T1", [1, 17, 64, 100])
@pytest.mark.parametrize("first,second", [("chunk", "chunk"), ("recurrent", "chunk"), ("chunk", "recurrent")])
def test_continuation_equals_one_run(T1, first, second):
    forms = {"chunk": lambda *a, **kw: chunk(*a, chunk_size=16, **kw), "recurrent": recurrent}
    B, T, H, HV, K, V, L = 2, 130, 1, 2, 4, 4, 5
    args = make_inputs(B, T, H, HV, K, V, L, seed=T1)
    state = make_state(B, HV, L, K, V, [3, 40], seed=T1 + 1)
    o_full, s_full = forms[first](*args, initial_state=state, output_final_state=True)
    o_a, s_a = forms[first](*(x[:, :T1] for x in args), initial_state=state, output_final_state=True)
    o_b, s_b = forms[second](*(x[:, T1:] for x in args), initial_state=s_a, output_final_state=True)
    assert_close(torch.cat([o_a, o_b], 1), o_full)
    assert_close(s_b.states, s_full.states)
    assert s_b.positions.tolist() == s_full.positions.tolist() == [3 + T, 40 + T]


# the quadratic reference takes no initial state
@pytest.mark.parametrize("form,with_state", [
    ("quadratic", False), ("recurrent", False), ("chunk", False), ("recurrent", True), ("chunk", True)])
def test_unit_lambdas_equal_fla_gated_delta_rule(form, with_state):
    B, T, H, HV, K, V, L = 2, 100, 2, 4, 16, 16, 6
    q, k, v, g, beta, _ = make_inputs(B, T, H, HV, K, V, L, seed=21, dtype=torch.float32)
    lam = torch.ones(B, T, HV, L)
    kwargs = {"output_final_state": True}
    h0 = None
    if with_state:
        state = make_state(B, HV, L, K, V, [13, 300], seed=22, dtype=torch.float32)
        kwargs["initial_state"] = state
        # with unit lambdas only the total over the occupied slots matters (the op ignores the rest)
        h0 = occupied_part(state.states, state.positions).sum(2)
    fn = {"quadratic": quadratic, "recurrent": recurrent, "chunk": chunk}[form]
    o, s = fn(q, k, v, g, beta, lam, **kwargs)
    # fla's reference has no grouped heads: give every value head its own copy of q and k
    rep = HV // H
    o_ref, h_ref = naive_recurrent_gated_delta_rule(
        q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2), v, beta, g,
        initial_state=h0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(s.states.sum(2).float(), h_ref, atol=2e-5, rtol=1e-4)


def _grads(fn, inputs, positions, weights, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    state = FenwickState(leaves[6], positions) if len(leaves) > 6 else None
    if state is not None:
        kw["initial_state"] = state
    o, s = fn(*leaves[:6], output_final_state=True, **kw)
    loss = (o * weights[0]).sum() + (s.states * weights[1]).sum()
    loss.backward()
    return [x.grad for x in leaves]


@pytest.mark.parametrize("with_state,C", [(False, 8), (True, 16)])
def test_chunk_gradients_match_references(with_state, C):
    B, T, H, HV, K, V, L = 2, 45, 1, 2, 8, 4, 5
    inputs = list(make_inputs(B, T, H, HV, K, V, L, seed=31))
    gen = torch.Generator().manual_seed(32)
    weights = (torch.randn(B, T, HV, V, generator=gen, dtype=F64),
               torch.randn(B, HV, L, K, V, generator=gen, dtype=F64))
    positions = None
    if with_state:
        state = make_state(B, HV, L, K, V, [3, 21], seed=33)
        inputs.append(state.states)
        positions = state.positions
        reference = _grads(recurrent, inputs, positions, weights)
    else:
        reference = _grads(quadratic, inputs, positions, weights)
    got = _grads(chunk, inputs, positions, weights, chunk_size=C)
    names = ["q", "k", "v", "g", "beta", "level_scales", "initial_state.states"]
    for name, a, b in zip(names, got, reference):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m: f"grad of {name}: {m}")


def test_low_precision_inputs():
    B, T, H, HV, K, V, L = 1, 70, 1, 1, 16, 16, 7
    args64 = make_inputs(B, T, H, HV, K, V, L, seed=41)
    ref, s_ref = quadratic(*args64, output_final_state=True)
    args = tuple(x.to(torch.bfloat16) for x in args64[:3]) + tuple(x.float() for x in args64[3:])
    for fn in (recurrent, lambda *a, **kw: chunk(*a, chunk_size=32, **kw)):
        o, s = fn(*args, output_final_state=True)
        assert o.dtype == torch.bfloat16 and s.states.dtype == torch.float32
        torch.testing.assert_close(o.double(), ref, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(s.states.double(), s_ref.states, atol=5e-2, rtol=5e-2)


def _bad(**overrides):
    base = dict(zip(["q", "k", "v", "g", "beta", "level_scales"], make_inputs(2, 8, 2, 4, 4, 4, 3, seed=0)))
    base.update(overrides)
    return base


BAD = [
    (dict(q=torch.randn(2, 8, 2)), ValueError, r"q must have shape \[B, T, H, K\]"),
    (dict(k=torch.randn(2, 8, 2, 5, dtype=F64)), ValueError, r"k has K = 5 .* expected 4"),
    (dict(v=torch.randn(2, 9, 4, 4, dtype=F64)), ValueError, r"v has T = 9 .* expected 8"),
    (dict(v=torch.randn(2, 8, 3, 4, dtype=F64), g=torch.randn(2, 8, 3, dtype=F64),
          beta=torch.rand(2, 8, 3, dtype=F64), level_scales=torch.rand(2, 8, 3, 3, dtype=F64)),
     ValueError, r"v heads \(3\) must be a multiple of the q/k heads \(2\)"),
    (dict(g=torch.randn(2, 8, 2, dtype=F64)), ValueError, r"g has HV = 2 .* expected 4"),
    (dict(beta=torch.rand(2, 8, 4, 1, dtype=F64)), ValueError, r"beta must have shape \[B, T, HV\]"),
    (dict(level_scales=torch.rand(2, 8, 4, dtype=F64)), ValueError,
     r"level_scales must have shape \[B, T, HV, L\]"),
    (dict(level_scales=torch.rand(2, 8, 4, 0, dtype=F64)), ValueError, r"L must be >= 1"),
    (dict(v=torch.randn(2, 8, 4, 4, dtype=torch.float32)), TypeError,
     r"v has dtype torch.float32 but q has torch.float64"),
    (dict(g=torch.zeros(2, 8, 4, dtype=torch.int64)), TypeError, r"g must be a floating-point tensor"),
    (dict(k=torch.randn(2, 8, 2, 4, dtype=F64, device="meta")), ValueError, r"k is on meta but q is on cpu"),
    (dict(q=torch.randn(2, 0, 2, 4, dtype=F64), k=torch.randn(2, 0, 2, 4, dtype=F64),
          v=torch.randn(2, 0, 4, 4, dtype=F64), g=torch.randn(2, 0, 4, dtype=F64),
          beta=torch.rand(2, 0, 4, dtype=F64), level_scales=torch.rand(2, 0, 4, 3, dtype=F64)),
     ValueError, r"at least one token"),
    (dict(q=torch.randn(0, 8, 2, 4, dtype=F64), k=torch.randn(0, 8, 2, 4, dtype=F64),
          v=torch.randn(0, 8, 4, 4, dtype=F64), g=torch.randn(0, 8, 4, dtype=F64),
          beta=torch.rand(0, 8, 4, dtype=F64), level_scales=torch.rand(0, 8, 4, 3, dtype=F64)),
     ValueError, r"B must be >= 1"),
]


@pytest.mark.parametrize("overrides,exc,match", BAD)
def test_bad_inputs(overrides, exc, match):
    kwargs = _bad(**overrides)
    with pytest.raises(exc, match=match):
        check_log_linear_gated_delta_rule_args(**kwargs)
    for fn in (quadratic, recurrent, chunk):
        with pytest.raises(exc, match=match):
            fn(**kwargs)


@pytest.mark.parametrize("cu_seqlens,B,match", [
    (torch.tensor([0, 3, 8]), 2, r"batch size must be 1"),
    (torch.tensor([0, 3, 7]), 1, r"must end at the token count T = 8"),
    (torch.tensor([0, 5, 5, 8]), 1, r"strictly increasing"),
    (torch.tensor([1, 8]), 1, r"must start at 0"),
    (torch.tensor([0.0, 8.0]), 1, r"int32 or int64"),
    (torch.tensor([[0, 8]]), 1, r"1-D integer tensor"),
])
def test_bad_cu_seqlens(cu_seqlens, B, match):
    kwargs = dict(zip(["q", "k", "v", "g", "beta", "level_scales"], make_inputs(B, 8, 1, 1, 4, 4, 3, seed=1)))
    for fn in (check_log_linear_gated_delta_rule_args, quadratic, recurrent, chunk):
        with pytest.raises((ValueError, TypeError), match=match):
            fn(**kwargs, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("state,exc,match", [
    (FenwickState(torch.zeros(2, 4, 2, 4, 4), torch.zeros(2, dtype=torch.int64)), ValueError,
     r"initial_state.states has shape \(2, 4, 2, 4, 4\), expected \[N, H, L, K, V\] = \[2, 4, 3, 4, 4\]"),
    (FenwickState(torch.zeros(2, 4, 3, 4, 4), torch.zeros(3, dtype=torch.int64)), ValueError,
     r"initial_state.positions has shape \(3,\)"),
    (FenwickState(torch.zeros(2, 4, 3, 4, 4), torch.zeros(2)), TypeError, r"positions must be an integer tensor"),
    (torch.zeros(2, 4, 4, 4), TypeError, r"initial_state must be a fla_loglinear.FenwickState"),
    (FenwickState(torch.zeros(2, 4, 3, 4, 4, device="meta"), torch.zeros(2, dtype=torch.int64)), ValueError,
     r"initial_state.states is on meta"),
])
def test_bad_initial_state(state, exc, match):
    kwargs = _bad()
    with pytest.raises(exc, match=match):
        check_log_linear_gated_delta_rule_args(**kwargs, initial_state=state)
    for fn in (recurrent, chunk):
        with pytest.raises(exc, match=match):
            fn(**kwargs, initial_state=state)


def test_negative_positions_and_chunk_size_rejected():
    kwargs = _bad()
    state = FenwickState(torch.zeros(2, 4, 3, 4, 4), torch.tensor([0, -1]))
    for fn in (recurrent, chunk):
        with pytest.raises(ValueError, match=r"positions must be >= 0"):
            fn(**kwargs, initial_state=state)
    for bad in (0, 3, 48):
        with pytest.raises(ValueError, match=r"chunk_size must be a power of two"):
            chunk(**kwargs, chunk_size=bad)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2), T=st.integers(1, 80), H=st.integers(1, 2), rep=st.integers(1, 2),
    K=st.sampled_from([2, 4, 8]), V=st.sampled_from([1, 3, 8]), L=st.integers(1, 9),
    C=st.sampled_from([1, 4, 16, 64]), positions=st.lists(st.integers(0, 300), min_size=2, max_size=2),
    seed=st.integers(0, 2 ** 16),
)
def test_property_chunk_equals_recurrent(B, T, H, rep, K, V, L, C, positions, seed):
    HV = H * rep
    args = make_inputs(B, T, H, HV, K, V, L, seed=seed)
    state = make_state(B, HV, L, K, V, positions[:B], seed=seed + 1)
    o_r, s_r = recurrent(*args, initial_state=state, output_final_state=True)
    o_c, s_c = chunk(*args, initial_state=state, output_final_state=True, chunk_size=C)
    assert_close(o_c, o_r)
    assert_close(s_c.states, s_r.states)
    assert s_c.positions.tolist() == s_r.positions.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunk_on_gpu_matches_cpu():
    cu = torch.tensor([0, 100, 1000, 1200])
    args = make_inputs(1, 1200, 2, 4, 64, 64, 8, seed=51, dtype=torch.float32)
    state = make_state(3, 4, 8, 64, 64, [0, 77, 4096], seed=52, dtype=torch.float32)
    o_cpu, s_cpu = chunk(*args, initial_state=state, output_final_state=True, cu_seqlens=cu)
    dev = "cuda"
    state_gpu = FenwickState(state.states.to(dev), state.positions.to(dev))
    o_gpu, s_gpu = chunk(*(x.to(dev) for x in args), initial_state=state_gpu, output_final_state=True,
                         cu_seqlens=cu.to(dev))
    torch.testing.assert_close(o_gpu.cpu(), o_cpu, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(s_gpu.states.cpu(), s_cpu.states, atol=2e-3, rtol=2e-3)
