"""Fenwick states for the tests: which slots are empty, found from ``levels.buckets`` (the query's
own partition) rather than from ``levels.occupied_slots``, which the ops use."""
import dataclasses

import torch

from fla_loglinear.levels import buckets
from fla_loglinear.state import FenwickState


def empty_slots(positions, L: int) -> torch.Tensor:
    """``[N, L]`` bool: the slots no key of ``[0, p)`` falls in (every bucket of query ``p`` but
    its own level 0 holds keys of ``[0, p)``)."""
    rows = []
    for p in torch.as_tensor(positions).tolist():
        held = {min(lvl, L - 1) for lvl, _, _ in buckets(p)[1:]}
        rows.append([l not in held for l in range(L)])
    return torch.tensor(rows, dtype=torch.bool)


def with_junk_in_empty_slots(state: FenwickState, seed: int = 7) -> FenwickState:
    """A copy of ``state`` with large random values in its empty slots, which every op must ignore."""
    mask = empty_slots(state.positions, state.num_levels).to(state.states.device)[:, None, :, None, None]
    gen = torch.Generator().manual_seed(seed)
    junk = 10 * torch.randn(state.states.shape, generator=gen).to(state.states)
    return FenwickState(torch.where(mask, junk, state.states.detach()).contiguous(), state.positions.clone())


def occupied_part(states: torch.Tensor, positions) -> torch.Tensor:
    """``states`` with the empty slots zeroed, for comparing states whose empty slots may hold anything."""
    mask = empty_slots(positions, states.shape[2]).to(states.device)[:, None, :, None, None]
    return states.masked_fill(mask, 0)


def settled_states(state: FenwickState, state_v_first: bool = False) -> torch.Tensor:
    """``state.states`` as ``[N, H, L, K, V]`` with the pending transitions of in-place Gated DeltaNet
    decoding applied (``settle_pending``; the state itself when it holds none)."""
    from fla_loglinear.ops.log_linear_gated_delta_rule import settle_pending

    if state_v_first:
        state = dataclasses.replace(state, states=state.states.transpose(-1, -2))
    return settle_pending(state).states
