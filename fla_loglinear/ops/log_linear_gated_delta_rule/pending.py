"""Pending transitions: how in-place decoding avoids rewriting every slot at every token.

Every token moves *all* slots through ``A_p = e^{g_p} (I - beta_p k_p k_p^T)``, so a decoding step
that applies it reads and writes each occupied slot (several times the bytes of fla's one state
at long positions).  Instead, in-place decoding (:func:`fused_recurrent_log_linear_gated_delta_rule`
with ``inplace_final_state=True``) logs ``(k_p, g_p, beta_p)`` and leaves the slots as they were:

- the output reads slot ``S`` through the transitions it has not seen as ``(A_a ... A_p q)^T S``,
  a ``[K]`` vector per slot, so reading costs one pass over the slot and no write;
- a slot is written (and brought up to date) only when a token merges into it, or when the log is
  full (every ``F`` tokens), when every occupied slot is;
- the transitions slot ``l`` has not seen are the last ``min(p - written_l, r)`` of the log, where
  ``written_l = levels.slot_written_at(p, l)`` and ``r = (p - pending_from) % F`` is the log's length.

Anything else that uses the state first applies the log (:func:`settle_pending`).
"""
from __future__ import annotations

import torch

from fla_loglinear.levels import slot_written_at
from fla_loglinear.ops.checks import check_pending
from fla_loglinear.state import FenwickState

__all__ = ["PENDING_CAPACITY", "attach_pending", "settle_pending"]

# Transitions a state may hold pending, F: a full log rewrites every occupied slot, so the rewrites
# cost 2 / F slot passes per token against the 2 per occupied slot of applying every transition.
PENDING_CAPACITY = 16


def attach_pending(state: FenwickState, K: int) -> None:
    """Gives ``state`` an empty log of :data:`PENDING_CAPACITY` transitions, in place (once: a state
    that has one keeps it)."""
    if state.has_pending:
        return
    N, H = state.states.shape[:2]
    dev = state.states.device
    state.pending_keys = torch.zeros(N, H, PENDING_CAPACITY, K, dtype=torch.float32, device=dev)
    state.pending_gates = torch.zeros(N, H, PENDING_CAPACITY, 2, dtype=torch.float32, device=dev)
    state.pending_from = state.positions.to(torch.int64, copy=True)


def settle_pending(state: FenwickState | None) -> FenwickState | None:
    """``state`` with its pending transitions applied and no log (the state itself when it has none).

    ``states`` is read as ``[N, H, L, K, V]``; differentiable in it (the log holds no gradients)."""
    if not isinstance(state, FenwickState) or not state.has_pending:
        return state
    check_pending("initial_state", state, state.states.shape[-2])
    S = state.states
    L, F = S.shape[2], state.pending_keys.shape[2]
    p = state.positions.to(torch.int64)
    r = (p - state.pending_from) % F
    # the log's entries [first, r) are pending for a slot
    first = r[:, None] - torch.minimum(p[:, None] - slot_written_at(p, L), r[:, None])
    keys = state.pending_keys.to(S.dtype)
    decay, beta = (state.pending_gates[..., j].to(S.dtype) for j in (0, 1))
    for i in range(F - 1):  # a full log is applied at once, so it holds at most F - 1
        on = (first <= i) & (r[:, None] > i)
        k = keys[:, :, i]
        ks = torch.einsum("nhk,nhlkv->nhlv", k, S)
        moved = decay[:, :, i, None, None, None].exp() * (
            S - beta[:, :, i, None, None, None] * k[:, :, None, :, None] * ks[:, :, :, None, :])
        S = torch.where(on[:, None, :, None, None], moved, S)
    return FenwickState(S, state.positions)
