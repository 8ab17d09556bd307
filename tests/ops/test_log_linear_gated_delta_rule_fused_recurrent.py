"""Decoding (fused_recurrent_log_linear_gated_delta_rule) against the token-recurrent reference."""
import pytest
import torch
import torch.nn.functional as F

from fla_loglinear.ops.log_linear_gated_delta_rule import (
    chunk_log_linear_gated_delta_rule,
    fused_recurrent_log_linear_gated_delta_rule,
    naive_recurrent_log_linear_gated_delta_rule,
)
from fla_loglinear.state import FenwickState
from tests.ops.states import occupied_part, settled_states, with_junk_in_empty_slots
from tests.ops.tolerance import assert_close

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def make_inputs(B, T, H, HV, K, V, L, dtype=torch.float32, device="cpu", seed=0, raw=False):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, HV, V)
    if raw:
        g, beta = rnd(B, T, HV), rnd(B, T, HV)
    else:
        k = F.normalize(k, dim=-1)
        g, beta = F.logsigmoid(rnd(B, T, HV)), torch.sigmoid(rnd(B, T, HV))
    lam = torch.rand(B, T, HV, L, generator=gen) + 0.5
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, g, beta, lam)]


def random_state(N, HV, L, K, V, positions, device="cpu", seed=1):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return FenwickState((torch.randn(N, HV, L, K, V, generator=gen) * 0.3).to(device),
                        torch.tensor(positions, dtype=torch.int64, device=device))


@pytest.mark.parametrize("B,T,H,HV,K,V,L,start", [
    (3, 1, 1, 1, 32, 16, 1, [0, 5, 7]),
    (3, 4, 2, 4, 32, 16, 6, [37, 100000, 5]),
    (2, 3, 1, 2, 16, 32, 20, [2 ** 19 - 1, 1023]),
    (2, 2, 1, 1, 32, 32, 4, None),
])
def test_decode_matches_recurrent(B, T, H, HV, K, V, L, start):
    q, k, v, g, beta, lam = make_inputs(B, T, H, HV, K, V, L)
    h0 = None if start is None else random_state(B, HV, L, K, V, start)
    o, st = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0,
                                                        output_final_state=True, _force_triton=True)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0,
                                                          output_final_state=True)
    assert_close(o, ro, 1e-5, "o")
    assert_close(st.states, rst.states, 1e-5, "states")
    assert torch.equal(st.positions, rst.positions)
    if h0 is not None:  # the input state is not modified in place
        assert torch.equal(h0.states, random_state(B, HV, L, K, V, start).states)


@pytest.mark.parametrize("L,positions", [
    (1, [0, 1, 9]),
    (2, [1, 2, 3]),
    (6, [0, 7, 31, 100]),  # 31 and 100 reach the last slot; 31 merges into it (the clamp)
    (20, [2 ** 17 - 2, 2 ** 19 - 1, 100_000, 5]),  # 16 occupied slots above the merge target; all merge
])
@pytest.mark.parametrize("layout", ["batch", "packed", "v_first"])
def test_decode_one_token_per_sequence(L, positions, layout):
    """A decoding step (one token per sequence; batched, packed, state_v_first), writing a new state
    and in place, from states with junk in their empty slots, against the reference."""
    N, H, HV, K, V = len(positions), 1, 2, 32, 16
    q, k, v, g, beta, lam = make_inputs(N, 1, H, HV, K, V, L, seed=L)
    h0 = random_state(N, HV, L, K, V, positions, seed=L + 1)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0,
                                                          output_final_state=True)
    kw = dict(_force_triton=True)
    if layout == "packed":
        q, k, v, g, beta, lam = (x.transpose(0, 1) for x in (q, k, v, g, beta, lam))
        kw["cu_seqlens"] = torch.arange(N + 1)
    junk = with_junk_in_empty_slots(h0)
    if layout == "v_first":
        kw["state_v_first"] = True
        junk = FenwickState(junk.states.transpose(-1, -2).contiguous(), junk.positions)
    o, st = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=junk,
                                                        output_final_state=True, **kw)
    states = st.states.transpose(-1, -2) if layout == "v_first" else st.states
    assert_close(o.reshape(ro.shape), ro, 1e-5, "o")
    # a new state holds zeros in its empty slots, as the reference's does
    assert_close(states, rst.states, 1e-5, "states")
    o_in, _ = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=junk,
                                                          inplace_final_state=True, **kw)
    assert_close(o_in.reshape(ro.shape), ro, 1e-5, "o in place")
    in_place = settled_states(junk, layout == "v_first")
    assert_close(occupied_part(in_place, junk.positions), rst.states, 1e-5, "states in place")
    assert torch.equal(junk.positions, rst.positions)


def test_decode_one_token_without_state():
    q, k, v, g, beta, lam = make_inputs(3, 1, 1, 1, 32, 16, 4, seed=3)
    o, st = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, output_final_state=True,
                                                        _force_triton=True)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, output_final_state=True)
    assert_close(o, ro, 1e-5, "o")
    assert_close(st.states, rst.states, 1e-5, "states")


def test_decode_varlen():
    q, k, v, g, beta, lam = make_inputs(1, 9, 1, 2, 32, 16, 5, seed=2)
    cu = torch.tensor([0, 1, 4, 9])
    h0 = random_state(3, 2, 5, 32, 16, [11, 0, 64])
    o, st = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0, cu_seqlens=cu,
                                                        output_final_state=True, _force_triton=True)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0, cu_seqlens=cu,
                                                          output_final_state=True)
    assert_close(o, ro, 1e-5, "o")
    assert_close(st.states, rst.states, 1e-5, "states")
    assert st.positions.tolist() == [12, 3, 69]


def test_decode_layer_options_and_state_v_first():
    B, T, H, HV, K, V, L = 2, 3, 1, 2, 32, 16, 7
    q, k, v, g, beta, lam = make_inputs(B, T, H, HV, K, V, L, seed=3, raw=True)
    A_log, dt_bias = torch.rand(HV).log(), torch.randn(HV)
    h0 = random_state(B, HV, L, K, V, [77, 4096])
    vf = FenwickState(h0.states.transpose(-1, -2).contiguous(), h0.positions)
    o, st = fused_recurrent_log_linear_gated_delta_rule(
        q, k, v, g, beta, lam, initial_state=vf, output_final_state=True, use_qk_l2norm_in_kernel=True,
        use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True, use_gate_in_kernel=True, A_log=A_log,
        dt_bias=dt_bias, state_v_first=True, _force_triton=True)
    pq = q * torch.rsqrt(q.pow(2).sum(-1, keepdim=True) + 1e-6)
    pk = k * torch.rsqrt(k.pow(2).sum(-1, keepdim=True) + 1e-6)
    pg = -A_log.exp() * F.softplus(g + dt_bias)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(pq, pk, v, pg, 2 * torch.sigmoid(beta), lam,
                                                          initial_state=h0, output_final_state=True)
    assert st.states.shape == (B, HV, L, V, K)
    assert_close(o, ro, 1e-5, "o")
    assert_close(st.states, rst.states.transpose(-1, -2), 1e-5, "states")


def test_decode_continues_the_chunked_op():
    """Prefill with the chunked op, then decode token by token: equals one chunked run."""
    q, k, v, g, beta, lam = make_inputs(2, 75, 1, 1, 32, 16, 5, seed=4)
    o, _ = chunk_log_linear_gated_delta_rule(q, k, v, g, beta, lam, _force_triton=True)
    _, st = chunk_log_linear_gated_delta_rule(*[x[:, :71] for x in (q, k, v, g, beta, lam)],
                                              output_final_state=True, _force_triton=True)
    outs = []
    for t in range(71, 75):
        o_t, st = fused_recurrent_log_linear_gated_delta_rule(*[x[:, t:t + 1] for x in (q, k, v, g, beta, lam)],
                                                              initial_state=st, output_final_state=True,
                                                              _force_triton=True)
        outs.append(o_t)
    assert_close(torch.cat(outs, 1), o[:, 71:], 1e-5, "decoded o")
    # in place, from the prefill state with junk in its empty slots (ignored)
    _, st = chunk_log_linear_gated_delta_rule(*[x[:, :71] for x in (q, k, v, g, beta, lam)],
                                              output_final_state=True, _force_triton=True)
    junk = with_junk_in_empty_slots(st)
    for force in (True, False):  # the kernel, then the reference the CPU runs
        s = FenwickState(junk.states.clone(), junk.positions.clone())
        outs = [fused_recurrent_log_linear_gated_delta_rule(*[x[:, t:t + 1] for x in (q, k, v, g, beta, lam)],
                                                            initial_state=s, inplace_final_state=True,
                                                            _force_triton=force)[0] for t in range(71, 75)]
        assert_close(torch.cat(outs, 1), o[:, 71:], 1e-5, f"decoded o in place (triton={force})")
        assert s.positions.tolist() == [75, 75]


def test_decode_in_place_state_v_first():
    q, k, v, g, beta, lam = make_inputs(2, 3, 1, 2, 16, 32, 5)
    h0 = random_state(2, 2, 5, 16, 32, [6, 40])
    ro, rst = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0,
                                                          output_final_state=True, _force_triton=True)
    vf = FenwickState(h0.states.transpose(-1, -2).contiguous(), h0.positions.clone())
    o, out = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=vf,
                                                         output_final_state=True, state_v_first=True,
                                                         inplace_final_state=True, _force_triton=True)
    assert out.states.data_ptr() == vf.states.data_ptr() and vf.positions.tolist() == [9, 43]
    assert_close(o, ro, 1e-5, "o")
    assert_close(occupied_part(vf.states.transpose(-1, -2), vf.positions), rst.states, 1e-5, "states")
    with pytest.raises(ValueError, match="needs an initial_state"):
        fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, inplace_final_state=True,
                                                    _force_triton=True)


def test_decode_is_forward_only():
    q, k, v, g, beta, lam = make_inputs(1, 1, 1, 1, 16, 16, 2)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, _force_triton=True)


def test_decode_bad_option_raises():
    q, k, v, g, beta, lam = make_inputs(1, 1, 1, 1, 16, 16, 2)
    with pytest.raises(TypeError, match="unsupported option"):
        fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, head_first=True, _force_triton=True)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("K", [64, 128, 256])
@pytest.mark.parametrize("T", [1, 2])
def test_gpu_decode(dtype, tol, K, T):
    check_gpu_decode(dtype, tol, K, T)


# launch shapes besides the default (32-wide V blocks, 4 warps at K = 128), swept by
# benchmarks/dev/sweep_gdn_decode.py
@needs_cuda
@pytest.mark.parametrize("BV,num_warps", [(16, 4), (64, 4), (32, 2), (32, 8), (64, 8), (16, 2), (128, 8)])
def test_gpu_decode_launch_shapes(monkeypatch, BV, num_warps):
    from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent

    monkeypatch.setattr(fused_recurrent, "_decode_blocks", lambda K, V, pending=False: (max(16, K), BV, num_warps))
    check_gpu_decode(torch.float32, 1e-4, 128, 2)


def check_gpu_decode(dtype, tol, K, T):
    """The decode kernel from random states at random positions (one at 100,000) against the token
    recurrence in float32, writing a new state and in place."""
    B, H, HV, L = 64, 2, 4, 18
    q, k, v, g, beta, lam = make_inputs(B, T, H, HV, K, K, L, dtype=dtype, device="cuda", seed=5)
    positions = torch.randint(0, 200_000, (B,)).tolist()
    positions[0] = 100_000
    h0 = random_state(B, HV, L, K, K, positions, device="cuda")
    o, st = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=h0,
                                                        output_final_state=True)
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(*(x.float() for x in (q, k, v, g, beta, lam)),
                                                          initial_state=h0, output_final_state=True)
    assert_close(o, ro, tol, "o")
    assert_close(st.states, rst.states, tol, "states")
    assert torch.equal(st.positions, rst.positions)
    # in place (the layers' decoding), from h0 with junk in its empty slots
    junk = with_junk_in_empty_slots(h0)
    o_in, _ = fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=junk,
                                                          inplace_final_state=True)
    assert_close(o_in, ro, tol, "o in place")
    assert_close(occupied_part(settled_states(junk), junk.positions), rst.states, tol, "states in place")
    assert torch.equal(junk.positions, rst.positions)
