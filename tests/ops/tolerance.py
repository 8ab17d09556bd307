"""The error criterion of the Gated DeltaNet kernel tests.

Not fla's ``fla.utils.testing.assert_close``: that one passes any result within 1e-6 of the
reference and, under ``FLA_CI_ENV``, only warns; these tests always assert, relative to the
reference's largest entry.
"""
import torch


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float, name: str) -> None:
    """The largest error of ``a`` within ``tol`` times the largest entry of the reference ``b`` (at least 1)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    err = (a - b).abs().max().item()
    ref = b.abs().max().item()
    assert err <= tol * max(ref, 1.0), f"{name}: max abs error {err:.3e} (reference max {ref:.3e})"
