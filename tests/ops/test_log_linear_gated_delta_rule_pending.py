"""In-place decoding with pending transitions (ops/log_linear_gated_delta_rule/pending.py) against the
token recurrence run over the same tokens in float64."""
import dataclasses

import pytest
import torch

from fla_loglinear.ops.log_linear_attn import chunk_log_linear_attn
from fla_loglinear.ops.log_linear_gated_delta_rule import (
    chunk_log_linear_gated_delta_rule,
    fused_recurrent_log_linear_gated_delta_rule,
    naive_recurrent_log_linear_gated_delta_rule,
    pending,
)
from fla_loglinear.state import FenwickState
from tests.ops.states import occupied_part, settled_states, with_junk_in_empty_slots
from tests.ops.test_log_linear_gated_delta_rule_fused_recurrent import CUDA, make_inputs, random_state
from tests.ops.tolerance import assert_close

needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def reference(inputs, h0, start, stop):
    """Outputs of tokens ``[start, stop)`` and the state after them, float64, from ``h0`` at ``start``."""
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(*(x[:, start:stop].double() for x in inputs),
                                                          initial_state=h0, output_final_state=True)
    return ro, rst


def decode_in_place(inputs, state, start, stop, layout, **kw):
    """Tokens ``[start, stop)`` one at a time into ``state`` (batched, packed or state_v_first)."""
    outs = []
    N = inputs[0].shape[0]
    for t in range(start, stop):
        step = [x[:, t:t + 1] for x in inputs]
        opts = dict(kw)
        if layout == "packed":
            step = [x.transpose(0, 1) for x in step]
            opts["cu_seqlens"] = torch.arange(N + 1, device=step[0].device)
        if layout == "v_first":
            opts["state_v_first"] = True
        o, _ = fused_recurrent_log_linear_gated_delta_rule(*step, initial_state=state, inplace_final_state=True,
                                                           **opts)
        outs.append(o.reshape(N, 1, *o.shape[2:]))
    return torch.cat(outs, 1)


def in_layout(state, layout):
    """A copy of ``state`` in the layout's state layout."""
    if layout != "v_first":
        return state.clone()
    return FenwickState(state.states.transpose(-1, -2).contiguous(), state.positions.clone())


def reorder(state, index):
    """What fla's Cache does to a dataclass state on beam reordering: index_select on every tensor field."""
    return type(state)(**{f.name: None if getattr(state, f.name) is None else getattr(state, f.name)[index]
                          for f in dataclasses.fields(state)})


@pytest.mark.parametrize("F", [2, 5, 16])
@pytest.mark.parametrize("L,positions", [
    (6, [27, 0, 13]),  # 27 reaches the last slot and merges into it at 32 and 48; 0 starts empty
    (20, [2 ** 17 - 5, 100_000, 1023]),  # a merge of 16 slots at 2^17; 6 occupied slots at 100,000
])
@pytest.mark.parametrize("layout", ["batch", "packed", "v_first"])
def test_pending_decode_matches_recurrent(monkeypatch, F, L, positions, layout):
    """Decoding 2F + 9 tokens in place keeps up to F - 1 transitions pending and writes only merge
    targets and full logs; outputs and the settled state equal the recurrence, also across a beam
    reorder of the state half-way (fla's Cache maps index_select over the fields)."""
    monkeypatch.setattr(pending, "PENDING_CAPACITY", F)
    N, H, HV, K, V, S = len(positions), 1, 2, 32, 16, 2 * F + 9
    inputs = make_inputs(N, S, H, HV, K, V, L, seed=F + L)
    h0 = with_junk_in_empty_slots(random_state(N, HV, L, K, V, positions, seed=L))
    state = in_layout(h0, layout)
    half = S // 2
    o1 = decode_in_place(inputs, state, 0, half, layout, _force_triton=True)
    assert state.has_pending and state.pending_keys.shape[2] == F
    ro1, rst1 = reference(inputs, h0, 0, half)
    assert_close(o1, ro1, 1e-5, "o, first half")
    assert_close(occupied_part(settled_states(state, layout == "v_first"), state.positions), rst1.states, 1e-5,
                 "settled state, half-way")

    perm = torch.tensor([2, 0, 1])
    state = reorder(state, perm)
    inputs = [x[perm] for x in inputs]
    o2 = decode_in_place(inputs, state, half, S, layout, _force_triton=True)
    ro2, rst2 = reference(inputs, reorder(rst1, perm), half, S)
    assert_close(o2, ro2, 1e-5, "o, second half")
    assert_close(occupied_part(settled_states(state, layout == "v_first"), state.positions), rst2.states, 1e-5,
                 "settled state")
    assert state.positions.tolist() == [positions[i] + S for i in perm.tolist()]


def test_pending_state_continues_everywhere():
    """A state with pending transitions continues exactly through every other path: the chunked op,
    decoding into a new state, in place several tokens at once (which applies the log and empties it),
    and the CPU reference path of in-place decoding."""
    N, H, HV, K, V, L = 2, 1, 1, 32, 16, 7
    inputs = make_inputs(N, 40, H, HV, K, V, L, seed=11)
    h0 = random_state(N, HV, L, K, V, [45, 6])
    ro, _ = reference(inputs, h0, 0, 40)

    def pending_state():
        st = h0.clone()
        decode_in_place(inputs, st, 0, 11, "batch", _force_triton=True)
        assert st.has_pending and (st.positions - st.pending_from).remainder(16).tolist() == [11, 11]
        return st

    o, _ = chunk_log_linear_gated_delta_rule(*(x[:, 11:40] for x in inputs), initial_state=pending_state(),
                                             _force_triton=True)
    assert_close(o, ro[:, 11:], 1e-5, "chunked op after pending decoding")
    o, _ = fused_recurrent_log_linear_gated_delta_rule(*(x[:, 11:14] for x in inputs), initial_state=pending_state(),
                                                       _force_triton=True)
    assert_close(o, ro[:, 11:14], 1e-5, "decoding into a new state")
    for force in (True, False):
        st = pending_state()
        o, _ = fused_recurrent_log_linear_gated_delta_rule(*(x[:, 11:14] for x in inputs), initial_state=st,
                                                           inplace_final_state=True, _force_triton=force)
        assert_close(o, ro[:, 11:14], 1e-5, f"three tokens in place (triton={force})")
        assert st.pending_from.tolist() == st.positions.tolist() == [59, 20]
        o = decode_in_place(inputs, st, 14, 19, "batch", _force_triton=True)
        assert_close(o, ro[:, 14:19], 1e-5, f"one token at a time again (triton={force})")


def test_pending_state_is_refused_where_it_cannot_be_applied():
    N, HV, K, V, L = 2, 1, 32, 16, 5
    q, k, v, g, beta, lam = make_inputs(N, 2, 1, HV, K, V, L, seed=2)
    st = random_state(N, HV, L, K, V, [3, 9])
    pending.attach_pending(st, K)
    with pytest.raises(ValueError, match="pending"):
        naive_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=st)
    # the scalar-gated ops have no pending transitions to apply
    with pytest.raises(ValueError, match="pending"):
        chunk_log_linear_attn(q, k, v, g, lam, initial_state=st)
    bad = dataclasses.replace(st, pending_gates=st.pending_gates[:, :, :4])
    with pytest.raises(ValueError, match="pending_gates has shape"):
        chunk_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=bad)
    bad = dataclasses.replace(st, pending_from=None)
    with pytest.raises(ValueError, match="all of"):
        fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=bad)


@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("K", [64, 128, 256])
def test_gpu_pending_decode(dtype, tol, K):
    """40 in-place steps (two full logs) at the benchmark's kind of positions, against the recurrence."""
    N, H, HV, L, S = 64, 2, 4, 18, 40
    inputs = make_inputs(N, S, H, HV, K, K, L, dtype=dtype, device="cuda", seed=6)
    positions = torch.randint(0, 200_000, (N,)).tolist()
    positions[0] = 100_000
    h0 = with_junk_in_empty_slots(random_state(N, HV, L, K, K, positions, device="cuda"))
    st = h0.clone()
    o = decode_in_place(inputs, st, 0, S, "batch")
    ro, rst = naive_recurrent_log_linear_gated_delta_rule(*(x.float() for x in inputs), initial_state=h0,
                                                          output_final_state=True)
    assert_close(o, ro, tol, "o")
    assert_close(occupied_part(settled_states(st), st.positions), rst.states, tol, "settled state")
