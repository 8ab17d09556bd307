"""One decode step of log-linear Gated DeltaNet against fla's linear step (CUDA only).

B = 64 sequences at position 100,000, H = 16, K = V = 128, bf16 inputs, fp32 states; ours holds
L = num_levels(2 * 100,000) level states per head, fla's fused_recurrent_gated_delta_rule one.
"""
import pytest
import torch
import torch.nn.functional as F

from fla_loglinear.levels import num_levels
from fla_loglinear.state import FenwickState

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need CUDA")

B, POS, H, K, V = 64, 100_000, 16, 128, 128


def decode_step(impl: str):
    """``(reset, step)``: one decode step of ``impl`` at the benchmark shape as a no-argument call (no
    sync), and the call that puts the state back where the next step must start (untimed: a decode
    loop does not do it).  ``ours`` decodes in place, as the layer does, which leaves each token's
    transition pending in a log of ``F = PENDING_CAPACITY`` entries and applies the log to every slot
    when it is full: every step is the step at position 100,000, and the steps cycle through the log's
    ``F`` fill levels (``r`` = 0 .. F - 1, the last one applying it), so a full log counts once per
    ``F`` steps, as in a long decode.  ``ours_new_state`` writes a new state, as fla's step does."""
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(B, 1, H, K, device=dev, dtype=bf)
    k = F.normalize(torch.randn(B, 1, H, K, device=dev), dim=-1).to(bf)
    v = torch.randn(B, 1, H, V, device=dev, dtype=bf)
    g = F.logsigmoid(torch.randn(B, 1, H, device=dev) + 3.0)
    beta = torch.rand(B, 1, H, device=dev).to(bf)
    if impl != "fla":
        from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent_log_linear_gated_delta_rule
        from fla_loglinear.ops.log_linear_gated_delta_rule.pending import PENDING_CAPACITY
        L = num_levels(2 * POS)
        lam = torch.rand(B, 1, H, L, device=dev) + 0.5
        st = FenwickState(torch.randn(B, H, L, K, V, device=dev) * 0.1,
                          torch.full((B,), POS, device=dev, dtype=torch.int64))

        calls = [0]

        def reset():
            if impl == "ours":
                st.positions.fill_(POS)
                if st.has_pending:  # r = calls % F transitions pending
                    st.pending_from.fill_(POS - calls[0] % PENDING_CAPACITY)

        def step():
            calls[0] += 1
            fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=st,
                                                        output_final_state=True, inplace_final_state=impl == "ours")
        return reset, step
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    h0 = torch.randn(B, H, K, V, device=dev) * 0.1
    return (lambda: None), (lambda: fused_recurrent_gated_delta_rule(q, k, v, g, beta, scale=K ** -0.5,
                                                                     initial_state=h0, output_final_state=True))


def reset_and_step(impl: str):
    """:func:`decode_step`'s two calls as one, for loops that time back-to-back steps."""
    reset, step = decode_step(impl)
    return lambda: (reset(), step())


@pytest.mark.parametrize("impl", ["ours", "ours_new_state", "fla"])
def test_bench_gdn_decode(benchmark, impl):
    reset, step = decode_step(impl)

    def setup():
        reset()
        torch.cuda.synchronize()

    def target():
        step()
        torch.cuda.synchronize()

    benchmark.group = "gated_delta_rule decode B=64 pos=100000"
    benchmark.extra_info.update(dict(T=1, op=impl, impl=impl, mode="decode", group="gated_delta_rule decode",
                                     B=B, position=POS))
    with torch.no_grad():
        # the reset of ours's state is outside the timed call, as fla's step has none
        benchmark.pedantic(target, setup=setup, rounds=32, warmup_rounds=1, iterations=1)  # two full logs of ours
