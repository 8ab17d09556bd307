"""The recurrent state of log-linear attention, shared by both variants."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from fla_loglinear.levels import occupied_slots

__all__ = ["FenwickState"]


@dataclass
class FenwickState:
    """Per-level states of ``N`` sequences, bucketed relative to each sequence's next position.

    Attributes:
        states: ``[N, H, L, K, V]`` float32; slot ``l`` sums the keys whose Fenwick level
            (see :mod:`fla_loglinear.levels`) relative to query ``positions[n]`` is ``l``
            (``>= L - 1`` for the last slot), each carried through every later transition.
            Slots that no key can be in at that position (``levels.occupied_slots``) are
            *empty*: every op ignores what they hold (decoding never reads them), and an
            in-place decoding step may leave stale values there.
        positions: ``[N]`` int64; tokens each sequence has consumed, i.e. the position of
            its next token.  Per sequence, so left padding and beam reordering just work.
        pending_keys, pending_gates, pending_from: ``None``, except in a state that log-linear Gated
            DeltaNet decodes in place (:mod:`fla_loglinear.ops.log_linear_gated_delta_rule.pending`):
            ``[N, H, F, K]`` keys and ``[N, H, F, 2]`` (log decay, beta) of the last
            ``(positions - pending_from) % F`` transitions, ``[N]`` int64, which reached only the slots
            a token wrote since.  Any other use of the state applies them first (``settle_pending``).

    A plain dataclass of tensors so that fla's ``Cache`` can carry, reorder and repeat it
    (it maps ``index_select`` / ``repeat_interleave`` over the fields).
    """

    states: torch.Tensor
    positions: torch.Tensor
    pending_keys: torch.Tensor | None = None
    pending_gates: torch.Tensor | None = None
    pending_from: torch.Tensor | None = None

    @classmethod
    def zeros(cls, N: int, H: int, L: int, K: int, V: int, device=None) -> "FenwickState":
        return cls(
            states=torch.zeros(N, H, L, K, V, dtype=torch.float32, device=device),
            positions=torch.zeros(N, dtype=torch.int64, device=device),
        )

    @property
    def num_levels(self) -> int:
        return self.states.shape[2]

    @property
    def has_pending(self) -> bool:
        return self.pending_keys is not None

    def without_empty_slots(self) -> "FenwickState":
        """The same state with its empty slots zeroed (differentiable; no host sync)."""
        if self.has_pending:
            raise ValueError("this FenwickState holds pending Gated DeltaNet transitions: settle it first "
                             "(fla_loglinear.ops.log_linear_gated_delta_rule.settle_pending)")
        occ = occupied_slots(self.positions, self.num_levels).to(self.states.device)
        mask = occ[:, None, :, None, None].to(self.states.dtype)
        return FenwickState(self.states * mask, self.positions)

    def _map(self, fn) -> "FenwickState":
        return FenwickState(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                               for f in fields(self)})

    def detach(self) -> "FenwickState":
        return self._map(torch.Tensor.detach)

    def clone(self) -> "FenwickState":
        return self._map(torch.Tensor.clone)
