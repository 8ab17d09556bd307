"""The custom ops that torch.compile sees (fla_loglinear/ops/library.py): torch.library.opcheck of each
(schema, fake, autograd registration), and the compiled chunked ops' gradients, state included, against
eager."""
from __future__ import annotations

import pytest
import torch

from fla_loglinear.ops import (
    chunk_log_linear_attn,
    chunk_log_linear_gated_delta_rule,
)
from fla_loglinear.state import FenwickState

B, T, H, K, V, L = 1, 20, 2, 8, 8, 3
# two packed sequences continuing from states at positions 3 and 70
CU = torch.tensor([0, 7, 20])
POS = torch.tensor([3, 70])


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    g = -torch.rand(B, T, H, generator=gen)
    beta, lam = torch.rand(B, T, H, generator=gen), torch.rand(B, T, H, L, generator=gen) + 0.5
    states = rnd(2, H, L, K, V) * 0.1
    return [x.requires_grad_() for x in (q, k, v, g, beta, lam, states)]


@pytest.mark.parametrize("with_state", [False, True])
def test_opcheck_chunk_ops(with_state):
    q, k, v, g, beta, lam, states = inputs()
    st, pos = (states, POS) if with_state else (None, None)
    ops = torch.ops.fla_loglinear
    torch.library.opcheck(ops.chunk_log_linear_attn, (q, k, v, g, lam, st, pos, CU, 0.3, True, False, 64, 4))
    torch.library.opcheck(ops.chunk_log_linear_gated_delta_rule,
                          (q, k, v, g, beta, lam, None, None, st, pos, None, None, None, CU, 0.3, True,
                           True, False, False, False, False, False))


@pytest.mark.parametrize("inplace", [False, True])
def test_opcheck_decode_ops(inplace):
    q, k, v, g, beta, lam, states = (x.detach() for x in inputs())
    ops = torch.ops.fla_loglinear
    torch.library.opcheck(ops.fused_recurrent_log_linear_attn,
                          (q, k, v, g, lam, states.clone(), POS.clone(), CU, 0.3, True, inplace, False))
    torch.library.opcheck(ops.fused_recurrent_log_linear_gated_delta_rule,
                          (q, k, v, g, beta, lam, None, None, states.clone(), POS.clone(), None, None, None, CU,
                           0.3, True, True, False, False, False, False, False, inplace))


def _scalar(q, k, v, g, beta, lam, states):
    return chunk_log_linear_attn(q, k, v, g, lam, FenwickState(states, POS), True, CU, 0.3)


def _gdn(q, k, v, g, beta, lam, states):
    A_log = torch.linspace(-1.0, 0.5, H)
    return chunk_log_linear_gated_delta_rule(q, k, v, g, beta, lam, 0.3, FenwickState(states, POS), True, True, CU,
                                             use_gate_in_kernel=True, A_log=A_log, use_beta_sigmoid_in_kernel=True)


@pytest.mark.parametrize("op", [_scalar, _gdn], ids=["scalar", "gdn"])
def test_compiled_gradients_reach_the_state(op):
    def loss(*xs):
        o, final = op(*xs)
        # both outputs carry gradient: o and the final state (positions advanced past the tokens)
        assert final.positions.tolist() == [3 + 7, 70 + 13] or torch.compiler.is_compiling()
        return (o * o.detach().sin()).sum() + (final.states * final.states.detach().cos()).sum()

    xs = inputs()
    ref = torch.autograd.grad(loss(*xs), xs, allow_unused=True)
    got = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(*xs), xs, allow_unused=True)
    for name, r, c in zip("q k v g beta lam states".split(), ref, got):
        if r is None:  # beta does not enter the scalar op
            assert c is None and op is _scalar and name == "beta"
            continue
        assert r.abs().max() > 0, name
        torch.testing.assert_close(c, r, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_a_launch_plan_under_compile_raises_naming_it():
    from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

    q, k, v, g, beta, lam, _ = (x.detach() for x in inputs())
    plan = plan_for(K, V, H, v.dtype, v.device)

    def run(*xs):
        return chunk_log_linear_gated_delta_rule(*xs, _plan=plan)[0]

    # fullgraph: otherwise Dynamo turns the error into a graph break and runs this frame eagerly, where
    # the plan is served
    with pytest.raises(Exception, match="_plan"):
        torch.compile(run, backend="aot_eager", fullgraph=True)(q, k, v, g, beta, lam)


# ---------------------------------------------------------------------------------------------------
# the Gated DeltaNet training op (fixed-length inputs, Triton path): the forward's residuals cross the op


# the Triton path: CUDA, or the interpreter without a GPU (tests/conftest.py)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _fixed_inputs(T: int, H: int = 1, HV: int = 2, K: int = 32, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(DEV)

    xs = (rnd(2, T, H, K), rnd(2, T, H, K), rnd(2, T, HV, K), rnd(2, T, HV), rnd(2, T, HV),
          torch.rand(2, T, HV, L, generator=gen).to(DEV) + 0.5, torch.linspace(-1.0, 0.5, HV, device=DEV), 0.1 * rnd(HV))
    return [x.requires_grad_() for x in xs]


@pytest.mark.parametrize("local", ["torch", "triton"])
@pytest.mark.parametrize("T", [64, 70])
def test_training_op_fake_residuals_match_the_forward(local, T):
    """The fake's residuals (saved_like) against the real forward's, for both local parts (the fused one
    is not what a CPU call picks, so opcheck below does not reach it)."""
    from fla_loglinear.ops.log_linear_gated_delta_rule.chunk import chunk_log_linear_gated_delta_rule_fwd, saved_like
    from fla_loglinear.ops.log_linear_gated_delta_rule.plan import plan_for

    q, k, v, g, beta, lam = (x.detach() for x in _fixed_inputs(T, H=2)[:6])
    g, beta = -g.sigmoid(), beta.sigmoid()
    plan = plan_for(32, 32, 2 * 2, v.dtype, v.device, local=local)
    residuals = chunk_log_linear_gated_delta_rule_fwd(q, k, v, g, beta, lam, 0.3, None, None, None, plan)[3]
    fakes = saved_like(q, k, v, lam, plan)
    assert len(fakes) == len(residuals) - 6
    for i, (real, fake) in enumerate(zip(residuals[6:], fakes)):
        if real is None:
            assert fake.numel() == 0, i
            continue
        assert (real.shape, real.dtype, real.is_contiguous()) == (fake.shape, fake.dtype, True), i


def test_opcheck_training_op():
    ops = torch.ops.fla_loglinear
    q, k, v, g, beta, lam, A_log, dt_bias = _fixed_inputs(70)
    torch.library.opcheck(ops.chunk_log_linear_gated_delta_rule_train,
                          (q, k, v, g, beta, lam, None, None, 0.3, True, False, False, False))
    torch.library.opcheck(ops.chunk_log_linear_gated_delta_rule_train,
                          (q, k, v, g, beta, lam, A_log, dt_bias, 0.3, False, True, True, True))


@pytest.mark.parametrize("T", [64, 70])
def test_compiled_training_op_equals_eager(T):
    """Fixed-length inputs on the Triton path compile to the training op, whose
    backward reads the forward's residuals; gradients of every input, A_log and dt_bias included, and
    of the final state, against the eager op."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    def loss(q, k, v, g, beta, lam, A_log, dt_bias):
        o, final = chunk_log_linear_gated_delta_rule(
            q, k, v, g, beta, lam, None, None, True, True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
            use_beta_sigmoid_in_kernel=True, _force_triton=True)
        assert final.positions.tolist() == [T, T] or torch.compiler.is_compiling()
        return (o * o.detach().sin()).sum() + (final.states * final.states.detach().cos()).sum()

    xs = _fixed_inputs(T)
    ref = torch.autograd.grad(loss(*xs), xs)
    graphs = EagerAndRecordGraphs()
    torch._dynamo.reset()
    got = torch.autograd.grad(torch.compile(loss, backend=graphs)(*xs), xs)
    ops = {str(n.target) for gm in graphs.graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert "fla_loglinear.chunk_log_linear_gated_delta_rule_train.default" in ops
    for name, r, c in zip("q k v g beta lam A_log dt_bias".split(), ref, got):
        assert r.abs().max() > 0, name
        # the same kernels both ways; on CUDA the autotuner may pick another block shape per call
        tol = 1e-5 if DEV == "cpu" else 1e-4
        torch.testing.assert_close(c, r, atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")
