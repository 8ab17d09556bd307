"""The three pure PyTorch forms of scalar-gated log-linear attention, checked against each other,
against a loop over levels.level, and against fla's own naive references."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fla_loglinear.levels import clamp_level, level, num_levels
from fla_loglinear.ops.log_linear_attn.naive import (
    naive_chunk_log_linear_attn,
    naive_quadratic_log_linear_attn,
    naive_recurrent_log_linear_attn,
)
from fla_loglinear.state import FenwickState
from tests.ops.states import occupied_part

F64 = torch.float64


def make_inputs(B, T, G, H, K, V, L, dtype=F64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, G, K, generator=gen, dtype=F64)
    k = torch.randn(B, T, G, K, generator=gen, dtype=F64)
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    # Weak decay so that coarse levels still carry weight over a few hundred tokens.
    g = -0.1 * torch.rand(B, T, H, generator=gen, dtype=F64)
    lam = 0.5 + torch.rand(B, T, H, L, generator=gen, dtype=F64)
    return [x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v, g, lam)]


def make_state(N, H, L, K, V, positions, dtype=F64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(N, H, L, K, V, generator=gen, dtype=F64).to(dtype)
    return FenwickState(states, torch.tensor(positions, dtype=torch.int64))


def loop_reference(q, k, v, g, lam, scale, start=0):
    """Direct double loop over (t, s) with levels.level, float64, one batch of equal sequences."""
    B, T, G, K = q.shape
    H, L = v.shape[2], lam.shape[-1]
    q, k, v, g, lam = (x.detach().to(F64) for x in (q, k, v, g, lam))
    Gc = g.cumsum(1)
    o = torch.zeros(B, T, H, v.shape[-1], dtype=F64)
    for h in range(H):
        qh, kh = q[:, :, h // (H // G)], k[:, :, h // (H // G)]
        for t in range(T):
            for s in range(t + 1):
                w = lam[:, t, h, clamp_level(level(start + t, start + s), L)] * (Gc[:, t, h] - Gc[:, s, h]).exp()
                o[:, t, h] += (w * (qh[:, t] * kh[:, s]).sum(-1))[:, None] * v[:, s, h]
    return o * scale


def assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def assert_state_close(a, b, tol=1e-10):
    assert torch.equal(a.positions, b.positions)
    torch.testing.assert_close(a.states, b.states.to(a.states.dtype), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------- forms agree

@pytest.mark.parametrize("T,L", [(1, 1), (5, 2), (13, None), (24, 3)])
def test_quadratic_matches_level_loop(T, L):
    L = L or num_levels(T)
    q, k, v, g, lam = make_inputs(2, T, 1, 2, 3, 2, L, seed=T)
    o, state = naive_quadratic_log_linear_attn(q, k, v, g, lam, scale=0.7)
    assert state is None
    assert_close(o, loop_reference(q, k, v, g, lam, 0.7))


FORM_CASES = [
    # B, T, G, H, K, V, L (None: num_levels(T)), chunk_size
    (2, 1, 1, 1, 4, 4, 1, 64),
    (2, 1, 1, 2, 4, 4, None, 64),
    (1, 2, 1, 1, 4, 3, None, 64),
    (3, 2, 2, 2, 4, 4, 1, 1),
    (2, 63, 1, 2, 8, 4, None, 16),
    (2, 63, 2, 4, 4, 8, 2, 64),
    (1, 64, 1, 1, 16, 16, None, 64),
    (2, 64, 1, 3, 4, 4, 3, 16),
    (2, 65, 2, 2, 8, 8, None, 64),
    (1, 65, 1, 1, 4, 4, 1, 32),
    (1, 65, 1, 2, 4, 4, 12, 16),
    (1, 200, 1, 2, 8, 8, None, 64),
    (2, 200, 2, 4, 4, 4, 3, 16),
    (1, 1000, 1, 1, 4, 4, None, 64),
    (1, 1000, 1, 1, 2, 2, 3, 128),
]


@pytest.mark.parametrize("B,T,G,H,K,V,L,C", FORM_CASES)
def test_three_forms_agree(B, T, G, H, K, V, L, C):
    L = L or num_levels(T)
    inputs = make_inputs(B, T, G, H, K, V, L, seed=T + L)
    o_q, _ = naive_quadratic_log_linear_attn(*inputs)
    o_r, s_r = naive_recurrent_log_linear_attn(*inputs, output_final_state=True)
    o_c, s_c = naive_chunk_log_linear_attn(*inputs, output_final_state=True, chunk_size=C)
    assert o_q.shape == (B, T, H, V)
    assert_close(o_r, o_q)
    assert_close(o_c, o_q)
    assert s_c.states.shape == (B, H, L, K, V) and s_c.positions.tolist() == [T] * B
    assert_state_close(s_c, s_r)
    # Structural: at rest slot 0 is empty (L > 1), and so is every slot l in 1..L-2 whose bit l-1 of T is 0.
    for lvl in range(L - 1):
        if lvl == 0 or not (T >> (lvl - 1)) & 1:
            assert s_c.states[:, :, lvl].abs().max() < 1e-12, lvl


def test_levels_matter():
    """Guards against a test suite that cannot fail: different lambdas per level change the output."""
    q, k, v, g, lam = make_inputs(1, 40, 1, 1, 4, 4, 6)
    o1, _ = naive_chunk_log_linear_attn(q, k, v, g, lam, chunk_size=8)
    o2, _ = naive_chunk_log_linear_attn(q, k, v, g, lam.flip(-1), chunk_size=8)
    assert (o1 - o2).abs().max() > 1e-2


def test_scale_default_and_dtype():
    q, k, v, g, lam = make_inputs(1, 30, 1, 2, 9, 4, 4)
    for fn in (naive_quadratic_log_linear_attn, naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn):
        assert_close(fn(q, k, v, g, lam)[0], fn(q, k, v, g, lam, scale=9 ** -0.5)[0])
    ref, _ = naive_quadratic_log_linear_attn(q, k, v, g, lam)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        q2, k2, v2 = (x.to(dtype) for x in (q, k, v))
        for fn in (naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn):
            o, s = fn(q2, k2, v2, g.float(), lam.float(), output_final_state=True)
            assert o.dtype == dtype and s.states.dtype == torch.float32
            torch.testing.assert_close(o.to(F64), ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- initial states

@pytest.mark.parametrize("P,Ts,L,C", [(5, 30, None, 16), (37, 90, 2, 64), (100, 60, None, 64), (100, 45, 3, 16)])
def test_chunk_from_prefix_state_equals_quadratic_suffix(P, Ts, L, C):
    L = L or num_levels(P + Ts)
    inputs = make_inputs(2, P + Ts, 1, 2, 4, 4, L, seed=P)
    o_full, _ = naive_quadratic_log_linear_attn(*inputs)
    prefix = [x[:, :P] for x in inputs]
    suffix = [x[:, P:] for x in inputs]
    for producer in (naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn):
        _, state = producer(*prefix, output_final_state=True)
        assert state.positions.tolist() == [P, P]
        o, final = naive_chunk_log_linear_attn(*suffix, initial_state=state, output_final_state=True, chunk_size=C)
        assert_close(o, o_full[:, P:])
        assert final.positions.tolist() == [P + Ts] * 2


@pytest.mark.parametrize("L", [1, 3, 22])
def test_chunk_vs_recurrent_from_random_states(L):
    positions = [0, 5, 1000, 77, 2**20 + 3]
    N, T, G, H, K, V = len(positions), 70, 1, 2, 4, 3
    inputs = make_inputs(N, T, G, H, K, V, L, seed=L)
    state = make_state(N, H, L, K, V, positions)
    o_r, s_r = naive_recurrent_log_linear_attn(*inputs, initial_state=state.clone(), output_final_state=True)
    for C in (16, 64):
        o_c, s_c = naive_chunk_log_linear_attn(*inputs, initial_state=state.clone(), output_final_state=True, chunk_size=C)
        assert_close(o_c, o_r)
        assert_state_close(s_c, s_r)
    assert s_r.positions.tolist() == [p + T for p in positions]


# ------------------------------------------------------------------------ varlen and continuation

@pytest.mark.parametrize("fn", [naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn])
def test_varlen_matches_per_sequence_loop(fn):
    cu = torch.tensor([0, 1, 65, 70, 200, 233])
    T, G, H, K, V, L = 233, 2, 4, 4, 4, 4
    inputs = make_inputs(1, T, G, H, K, V, L, seed=3)
    state = make_state(5, H, L, K, V, [3, 0, 64, 1001, 17])
    kwargs = {"chunk_size": 32} if fn is naive_chunk_log_linear_attn else {}
    o, s = fn(*inputs, initial_state=state, output_final_state=True, cu_seqlens=cu, **kwargs)
    o_nostate, _ = fn(*inputs, cu_seqlens=cu, **kwargs)
    o_quad, _ = naive_quadratic_log_linear_attn(*inputs, cu_seqlens=cu)
    assert_close(o_nostate, o_quad)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        seq = [x[:, a:b] for x in inputs]
        sub = FenwickState(state.states[n:n + 1], state.positions[n:n + 1])
        o_n, s_n = fn(*seq, initial_state=sub, output_final_state=True, **kwargs)
        assert_close(o[:, a:b], o_n)
        assert_state_close(FenwickState(s.states[n:n + 1], s.positions[n:n + 1]), s_n)
        assert_close(o_quad[:, a:b], naive_quadratic_log_linear_attn(*seq)[0])


@pytest.mark.parametrize("fn", [naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn])
@pytest.mark.parametrize("cuts", [(37,), (1, 2, 3, 64, 100), (16, 48, 81)])
def test_continuation_equals_one_run(fn, cuts):
    T, L = 130, 5
    inputs = make_inputs(2, T, 1, 2, 4, 4, L, seed=len(cuts))
    start = make_state(2, 2, L, 4, 4, [0, 29])
    kwargs = {"chunk_size": 16} if fn is naive_chunk_log_linear_attn else {}
    o_full, s_full = fn(*inputs, initial_state=start.clone(), output_final_state=True, **kwargs)
    state, outs = start.clone(), []
    for a, b in zip((0,) + cuts, cuts + (T,)):
        o, state = fn(*[x[:, a:b] for x in inputs], initial_state=state, output_final_state=True, **kwargs)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full)
    assert_state_close(state, s_full)


def test_decoding_token_by_token_matches_chunk():
    T, L = 40, 4
    inputs = make_inputs(3, T, 1, 2, 4, 4, L, seed=9)
    state = make_state(3, 2, L, 4, 4, [0, 7, 12345])
    o_c, s_c = naive_chunk_log_linear_attn(*inputs, initial_state=state.clone(), output_final_state=True, chunk_size=8)
    s, outs = state.clone(), []
    for t in range(T):
        o, s = naive_recurrent_log_linear_attn(*[x[:, t:t + 1] for x in inputs], initial_state=s, output_final_state=True)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_c)
    assert_state_close(s, s_c)


# ------------------------------------------------------------------------------ fla references

@pytest.mark.parametrize("fn", [naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn])
def test_unit_lambdas_equal_fla_simple_gla(fn):
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    B, T, G, H, K, V, L = 2, 150, 2, 4, 8, 8, 3
    q, k, v, g, _ = make_inputs(B, T, G, H, K, V, L, dtype=torch.float32, seed=5)
    g = g * 5  # stronger decay than the default inputs, fla's reference is float32
    lam = torch.ones(B, T, H, L)
    state = make_state(B, H, L, K, V, [4, 300], dtype=torch.float32)
    o, s = fn(q, k, v, g, lam, initial_state=state, output_final_state=True, scale=0.3)
    q_h, k_h = (x.repeat_interleave(H // G, dim=2) for x in (q, k))
    o_ref, s_ref = naive_recurrent_simple_gla(
        # the slots empty at each position hold random values here, which the op ignores
        q_h, k_h, v, g, scale=0.3, initial_state=occupied_part(state.states, state.positions).sum(2),
        output_final_state=True,
    )
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.states.sum(2), s_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("G,H,T", [(1, 1, 33), (1, 2, 64), (2, 4, 100)])
def test_covering_levels_equal_fla_naive_log_linear(G, H, T):
    from fla.ops.log_linear_attn.naive import naive_log_linear_attn

    L = num_levels(T)
    inputs = make_inputs(2, T, G, H, 4, 6, L, seed=T)
    o_ref = naive_log_linear_attn(*inputs, scale=0.4)
    assert_close(naive_quadratic_log_linear_attn(*inputs, scale=0.4)[0], o_ref)
    assert_close(naive_chunk_log_linear_attn(*inputs, scale=0.4, chunk_size=16)[0], o_ref)


# ------------------------------------------------------------------------------------ gradients

def _grads(outputs, wrt, cotangents):
    loss = sum((o * c).sum() for o, c in zip(outputs, cotangents))
    return torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("T,L,C", [(70, 3, 16), (45, None, 64), (33, 1, 8)])
def test_chunk_gradients_match_quadratic(T, L, C):
    L = L or num_levels(T)
    inputs = make_inputs(2, T, 2, 4, 4, 3, L, seed=T, requires_grad=True)
    do = torch.randn(2, T, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(7))
    ref = _grads([naive_quadratic_log_linear_attn(*inputs)[0]], inputs, [do])
    got = _grads([naive_chunk_log_linear_attn(*inputs, chunk_size=C)[0]], inputs, [do])
    for name, a, b in zip("q k v g level_scales".split(), got, ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_chunk_gradients_through_states_match_recurrent():
    N, T, G, H, K, V, L = 3, 50, 1, 2, 4, 4, 4
    inputs = make_inputs(N, T, G, H, K, V, L, seed=11, requires_grad=True)
    init = make_state(N, H, L, K, V, [0, 13, 2**30 + 5])
    states = init.states.clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(N, T, H, V, dtype=F64, generator=gen)
    dS = torch.randn(N, H, L, K, V, dtype=F64, generator=gen)
    wrt = inputs + [states]
    results = {}
    for fn, kw in ((naive_recurrent_log_linear_attn, {}), (naive_chunk_log_linear_attn, {"chunk_size": 16})):
        o, s = fn(*inputs, initial_state=FenwickState(states, init.positions), output_final_state=True, **kw)
        results[fn] = _grads([o, s.states], wrt, [do, dS])
    for name, a, b in zip("q k v g level_scales initial_state.states".split(), *results.values()):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_chunk_gradcheck_small():
    inputs = make_inputs(1, 11, 1, 2, 2, 2, 3, seed=4, requires_grad=True)
    state = make_state(1, 2, 3, 2, 2, [6])
    states = state.states.clone().requires_grad_(True)

    def f(q, k, v, g, lam, s):
        o, fin = naive_chunk_log_linear_attn(
            q, k, v, g, lam, initial_state=FenwickState(s, state.positions), output_final_state=True, chunk_size=4
        )
        return o, fin.states

    assert torch.autograd.gradcheck(f, (*inputs, states))


# ---------------------------------------------------------------------------------- bad inputs

FNS = [naive_quadratic_log_linear_attn, naive_recurrent_log_linear_attn, naive_chunk_log_linear_attn]


def _good():
    q, k, v, g, lam = make_inputs(2, 10, 1, 2, 4, 4, 3, dtype=torch.float32)
    return dict(q=q, k=k, v=v, g=g, level_scales=lam)


BAD_INPUTS = [
    ("q rank", lambda a: a.update(q=a["q"][0]), ValueError, r"q must have shape \[B, T, G, K\]"),
    ("k shape", lambda a: a.update(k=a["k"][:, :9]), ValueError, r"k has shape \(2, 9, 1, 4\) but q has \(2, 10, 1, 4\)"),
    ("v batch", lambda a: a.update(v=a["v"][:1]), ValueError, r"v has batch size B = 1"),
    ("v length", lambda a: a.update(v=a["v"][:, :4]), ValueError, r"v has sequence length T = 4"),
    ("g rank", lambda a: a.update(g=a["g"][..., None]), ValueError, r"g must have shape \[B, T, H\]"),
    ("g heads", lambda a: a.update(g=a["g"][:, :, :1]), ValueError, r"g has heads H = 1 .* expected 2"),
    ("lambda heads", lambda a: a.update(level_scales=a["level_scales"][:, :, :1]), ValueError, r"level_scales has heads H = 1"),
    ("lambda length", lambda a: a.update(level_scales=a["level_scales"][:, 1:]), ValueError, r"level_scales has sequence length T = 9"),
    ("empty batch", lambda a: a.update(**{n: x[:0] for n, x in a.items()}), ValueError, r"B must be >= 1"),
    ("no levels", lambda a: a.update(level_scales=a["level_scales"][..., :0]), ValueError, r"L must be >= 1"),
    ("head groups", lambda a: a.update(q=a["q"].expand(-1, -1, 3, -1), k=a["k"].expand(-1, -1, 3, -1)), ValueError, r"v heads \(2\) must be a multiple of the q/k heads \(3\)"),
    ("dtype", lambda a: a.update(v=a["v"].double()), TypeError, r"v has dtype torch.float64 but q has torch.float32"),
    ("int gate", lambda a: a.update(g=a["g"].long()), TypeError, r"g must be a floating-point tensor"),
    ("not a tensor", lambda a: a.update(k=a["k"].tolist()), TypeError, r"k must be a torch.Tensor"),
    ("device", lambda a: a.update(v=a["v"].to("meta")), ValueError, r"v is on meta but q is on cpu"),
]


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("case,mutate,exc,match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise(fn, case, mutate, exc, match):
    args = _good()
    mutate(args)
    with pytest.raises(exc, match=match):
        fn(**args)


def _packed():
    args = _good()
    return {name: x[:1] for name, x in args.items()}


BAD_CU = [
    ("batch", None, torch.tensor([0, 4, 10]), r"batch size must be 1"),
    ("start", "packed", torch.tensor([1, 4, 10]), r"must start at 0"),
    ("increasing", "packed", torch.tensor([0, 4, 4, 10]), r"strictly increasing"),
    ("end", "packed", torch.tensor([0, 4, 9]), r"must end at the token count T = 10"),
    ("dtype", "packed", torch.tensor([0.0, 4.0, 10.0]), r"int32 or int64"),
    ("rank", "packed", torch.tensor([[0, 4, 10]]), r"1-D integer tensor"),
]


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("case,layout,cu,match", BAD_CU, ids=[c[0] for c in BAD_CU])
def test_bad_cu_seqlens_raise(fn, case, layout, cu, match):
    args = _packed() if layout else _good()
    with pytest.raises((ValueError, TypeError), match=match):
        fn(**args, cu_seqlens=cu)


BAD_STATES = [
    ("levels", lambda: make_state(2, 2, 4, 4, 4, [0, 0]), ValueError, r"initial_state.states has shape \(2, 2, 4, 4, 4\), expected .*\[2, 2, 3, 4, 4\]"),
    ("rows", lambda: make_state(3, 2, 3, 4, 4, [0, 0, 0]), ValueError, r"initial_state.states has shape"),
    ("positions", lambda: FenwickState(torch.zeros(2, 2, 3, 4, 4), torch.zeros(3, dtype=torch.int64)), ValueError, r"initial_state.positions has shape \(3,\)"),
    ("float positions", lambda: FenwickState(torch.zeros(2, 2, 3, 4, 4), torch.zeros(2)), TypeError, r"positions must be an integer"),
    ("negative", lambda: make_state(2, 2, 3, 4, 4, [3, -1]), ValueError, r"positions must be >= 0"),
    ("raw tensor", lambda: torch.zeros(2, 2, 3, 4, 4), TypeError, r"must be a fla_loglinear.FenwickState"),
    ("device", lambda: FenwickState(torch.zeros(2, 2, 3, 4, 4, device="meta"), torch.zeros(2, dtype=torch.int64)), ValueError, r"initial_state.states is on meta"),
]


@pytest.mark.parametrize("fn", FNS[1:])
@pytest.mark.parametrize("case,make,exc,match", BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_bad_initial_state_raise(fn, case, make, exc, match):
    with pytest.raises(exc, match=match):
        fn(**_good(), initial_state=make())


@pytest.mark.parametrize("chunk_size", [0, 3, 48, -16, 16.0, True])
def test_bad_chunk_size_raise(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
        naive_chunk_log_linear_attn(**_good(), chunk_size=chunk_size)


# ------------------------------------------------------------------------------------ property

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 90),
    G=st.sampled_from([1, 2]),
    R=st.sampled_from([1, 2]),
    K=st.integers(1, 6),
    V=st.integers(1, 6),
    L=st.integers(1, 9),
    log_c=st.integers(0, 6),
    positions=st.lists(st.integers(0, 300), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_property_forms_agree(B, T, G, R, K, V, L, log_c, positions, seed):
    H, C = G * R, 2**log_c
    inputs = make_inputs(B, T, G, H, K, V, L, seed=seed)
    o_q, _ = naive_quadratic_log_linear_attn(*inputs)
    assert_close(naive_chunk_log_linear_attn(*inputs, chunk_size=C)[0], o_q)
    state = make_state(B, H, L, K, V, positions[:B], seed=seed + 1)
    o_r, s_r = naive_recurrent_log_linear_attn(*inputs, initial_state=state, output_final_state=True)
    o_c, s_c = naive_chunk_log_linear_attn(*inputs, initial_state=state, output_final_state=True, chunk_size=C)
    assert_close(o_c, o_r)
    assert_state_close(s_c, s_r)
