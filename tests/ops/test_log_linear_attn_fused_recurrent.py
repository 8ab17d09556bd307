"""fused_recurrent_log_linear_attn (decoding) against the float64 token recurrence."""
import pytest
import torch

from fla_loglinear.levels import num_levels
from fla_loglinear.ops.log_linear_attn import (
    chunk_log_linear_attn,
    fused_recurrent_log_linear_attn,
    naive_recurrent_log_linear_attn,
)
from fla_loglinear.state import FenwickState
from tests.ops.sm90 import run_uninterpreted
from tests.ops.states import occupied_part, with_junk_in_empty_slots
from tests.ops.test_log_linear_attn_chunk import make_inputs

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def decode(*args, **kw):
    return fused_recurrent_log_linear_attn(*args, _use_triton=True, **kw)


def rel_err(ref, out):
    return ((ref.double() - out.double()).abs().max() / ref.double().abs().max()).item()


def reference(xs, state, cu_seqlens=None):
    return naive_recurrent_log_linear_attn(
        *(x.double() for x in xs), FenwickState(state.states.double(), state.positions), True, cu_seqlens
    )


@pytest.mark.parametrize("L", [5, 18])
def test_decode_steps_from_per_sequence_positions(L):
    """Several single-token steps, each sequence at its own position (merges differ per sequence)."""
    positions = [0, 7, 63, 1023, 100_000]
    N, G, H, K, V, steps = len(positions), 1, 2, 16, 32, 4
    xs, state = make_inputs(N, steps, G, H, K, V, L, device=DEVICE, positions=positions, seed=L)
    ro, rst = reference(xs, state)
    st, outs = state, []
    for i in range(steps):
        o, st = decode(*(x[:, i:i + 1] for x in xs), st, True)
        outs.append(o)
    o = torch.cat(outs, 1)
    assert st.positions.tolist() == [p + steps for p in positions]
    assert rel_err(ro, o) < 2e-5
    assert rel_err(rst.states, st.states) < 2e-5


def test_decode_multi_token_and_varlen():
    positions = [5, 64, 300]
    cu = torch.tensor([0, 1, 4, 6], device=DEVICE)
    T, G, H, K, V, L = 6, 2, 4, 16, 16, 7
    xs, state = make_inputs(1, T, G, H, K, V, L, device=DEVICE, positions=positions, seed=2)
    ro, rst = reference(xs, state, cu)
    o, st = decode(*xs, state, True, cu)
    assert st.positions.tolist() == [6, 67, 302]
    assert rel_err(ro, o) < 2e-5
    assert rel_err(rst.states, st.states) < 2e-5
    # a batch of 3 tokens per sequence, without a starting state
    xs, _ = make_inputs(2, 3, 1, 2, 16, 16, 3, device=DEVICE, seed=3)
    o, st = decode(*xs, None, True)
    ro, rst = naive_recurrent_log_linear_attn(*(x.double() for x in xs), None, True)
    assert rel_err(ro, o) < 2e-5 and rel_err(rst.states, st.states) < 2e-5


def test_decode_continues_chunk_prefill():
    """Prefill with the chunked op, then decode: same as running the recurrence throughout."""
    T, steps, L = 37, 3, 7
    xs, _ = make_inputs(2, T + steps, 1, 2, 16, 16, L, device=DEVICE, seed=5)
    kw = {} if CUDA else dict(_use_triton=True, _chunk_size=16)
    _, st = chunk_log_linear_attn(*(x[:, :T] for x in xs), None, True, **kw)
    ro, rst = naive_recurrent_log_linear_attn(*(x.double() for x in xs), None, True)
    # in place, from a state whose empty slots hold junk (ignored): the state object itself advances
    junk = with_junk_in_empty_slots(st)
    tokens = [x[:, T:] for x in xs]
    o_in = torch.cat([decode(*(x[:, i:i + 1] for x in tokens), junk, False, inplace_final_state=True)[0]
                      for i in range(steps)], 1)
    o, st = decode(*tokens, st, True)
    assert rel_err(ro[:, T:], o) < 2e-5
    assert rel_err(rst.states, st.states) < 2e-5
    assert rel_err(ro[:, T:], o_in) < 2e-5
    assert junk.positions.tolist() == [T + steps] * 2
    assert rel_err(rst.states, occupied_part(junk.states, junk.positions)) < 2e-5


@pytest.mark.parametrize("use_triton", [True, False])
def test_decode_in_place_returns_the_initial_state(use_triton):
    positions = [3, 64, 1000]
    xs, state = make_inputs(3, 2, 1, 2, 16, 16, 6, device=DEVICE, positions=positions, seed=6)
    ro, rst = reference(xs, state)
    st = FenwickState(state.states.clone(), state.positions.clone())
    o, out = fused_recurrent_log_linear_attn(*xs, st, True, inplace_final_state=True, _use_triton=use_triton)
    assert out is st and st.positions.tolist() == [p + 2 for p in positions]
    assert rel_err(ro, o) < 2e-5
    assert rel_err(rst.states, occupied_part(st.states, st.positions)) < 2e-5


def test_decode_in_place_needs_a_float32_state():
    xs, state = make_inputs(1, 1, 1, 1, 16, 16, 3, device=DEVICE, positions=[4])
    with pytest.raises(ValueError, match="needs an initial_state"):
        decode(*xs, None, True, inplace_final_state=True)
    half = FenwickState(state.states.half(), state.positions)
    with pytest.raises(ValueError, match="contiguous float32"):
        decode(*xs, half, True, inplace_final_state=True)
    with pytest.raises(TypeError, match="int64"):
        decode(*xs, FenwickState(state.states, state.positions.int()), True, inplace_final_state=True)


def test_decode_refuses_grad():
    xs, state = make_inputs(1, 1, 1, 1, 16, 16, 3, device=DEVICE, positions=[4])
    xs[0].requires_grad_()
    with pytest.raises(RuntimeError, match="forward-only"):
        decode(*xs, state, True)
    with torch.no_grad():
        decode(*xs, state, True)


def test_decode_kernels_lower_for_hopper():
    """Both decode kernels (this op's and the GDN one), new state and in place, compile for sm_90."""
    assert len(run_uninterpreted("decode-kernels")) == 4


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decode_cuda_large_positions(dtype):
    B, H, K, V = 64, 4, 128, 128
    L = num_levels(200_000)
    positions = torch.randint(90_000, 110_000, (B,)).tolist()
    xs, state = make_inputs(B, 3, 1, H, K, V, L, device="cuda", positions=positions, seed=9)
    ro, rst = reference(xs, state)
    xs_d = [x.to(dtype) for x in xs[:3]] + xs[3:]
    st, outs = state, []
    for i in range(3):
        o, st = fused_recurrent_log_linear_attn(*(x[:, i:i + 1] for x in xs_d), st, True)
        outs.append(o)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert rel_err(ro, torch.cat(outs, 1)) < tol
    assert rel_err(rst.states, st.states) < tol
    # in place (the layers' decoding), from the state with junk in its empty slots
    junk = with_junk_in_empty_slots(state)
    outs = [fused_recurrent_log_linear_attn(*(x[:, i:i + 1] for x in xs_d), junk, False, inplace_final_state=True)[0]
            for i in range(3)]
    assert rel_err(ro, torch.cat(outs, 1)) < tol
    assert rel_err(rst.states, occupied_part(junk.states, junk.positions)) < tol
