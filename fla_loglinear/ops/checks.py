"""Argument checks shared by every public op: each raises before any work is done."""
from __future__ import annotations

import torch

from fla_loglinear.state import FenwickState

__all__ = ["check_rank", "check_same_device", "check_float_dtypes", "check_cu_seqlens", "check_state", "check_heads",
           "check_inplace_state", "check_pending", "finish_inplace", "updatable_in_place"]


def check_rank(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got {tuple(x.shape)}")


def check_dim(name: str, x: torch.Tensor, dim: int, ref_name: str, ref: torch.Tensor, what: str) -> None:
    """``x.shape[dim]`` must equal ``ref.shape[dim]``.  The message is built only on failure: a
    decode step runs these checks every token."""
    expected = ref.shape[dim]
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name} has {what} = {x.shape[dim]} (shape {tuple(x.shape)}), expected {expected} "
            f"to match {ref_name} {tuple(ref.shape)}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.device != t0.device:
            raise ValueError(f"{name} is on {t.device} but {name0} is on {t0.device}; all inputs must share a device")


def check_float_dtypes(**tensors: torch.Tensor | None) -> None:
    """q, k, v (the first three) must share one floating dtype; gates and scales may be any float."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    for name, t in items:
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    name0, t0 = items[0]
    for name, t in items[1:3]:
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {name0} has {t0.dtype}; q, k and v must share a dtype")


def check_cu_seqlens(cu_seqlens: torch.Tensor | None, B: int, T: int) -> int:
    """Validates packed sequence offsets and returns the number of sequences N."""
    if cu_seqlens is None:
        return B
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1:
        shape = tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor of shape [N + 1], got {shape}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the batch size must be 1 (sequences are packed along T), got B = {B}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must hold at least 2 offsets [0, ..., T], got {cu_seqlens.tolist()}")
    if torch.compiler.is_compiling():
        # values cannot be read while tracing: the custom op (ops/library.py) checks them when it runs
        return cu_seqlens.shape[0] - 1
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {offsets[0]}")
    if any(b <= a for a, b in zip(offsets[:-1], offsets[1:])):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {offsets}")
    if offsets[-1] != T:
        raise ValueError(f"cu_seqlens must end at the token count T = {T}, got {offsets[-1]}")
    return len(offsets) - 1


def check_heads(G: int, H: int, qk_name: str = "q/k", v_name: str = "v") -> None:
    if H % G != 0:
        raise ValueError(f"the {v_name} heads ({H}) must be a multiple of the {qk_name} heads ({G})")


def check_state(
    name: str, state: FenwickState | None, N: int, H: int, L: int, K: int, V: int, device: torch.device,
    pending: bool = False,
) -> None:
    """``pending``: the caller decodes Gated DeltaNet states with their pending transitions (every
    other caller gets them settled first, or is not a Gated DeltaNet op and cannot use them)."""
    if state is None:
        return
    if not isinstance(state, FenwickState):
        raise TypeError(f"{name} must be a fla_loglinear.FenwickState, got {type(state).__name__}")
    if state.has_pending and not pending:
        raise ValueError(
            f"{name} holds pending Gated DeltaNet transitions (pending_keys is set), which this op does not "
            "apply; only the log-linear Gated DeltaNet ops continue such a state"
        )
    expected = (N, H, L, K, V)
    if tuple(state.states.shape) != expected:
        raise ValueError(
            f"{name}.states has shape {tuple(state.states.shape)}, expected [N, H, L, K, V] = {list(expected)} for this call"
        )
    if tuple(state.positions.shape) != (N,):
        raise ValueError(f"{name}.positions has shape {tuple(state.positions.shape)}, expected [N] = [{N}]")
    if state.positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}.positions must be an integer tensor, got {state.positions.dtype}")
    if not state.states.is_floating_point():
        raise TypeError(f"{name}.states must be floating point, got {state.states.dtype}")
    for field in ("states", "positions"):
        dev = getattr(state, field).device
        if dev != device:
            raise ValueError(f"{name}.{field} is on {dev} but the inputs are on {device}")
    if state.has_pending:
        check_pending(name, state, K)


def check_pending(name: str, state: FenwickState, K: int) -> None:
    """The pending-transition fields of ``state`` (see :class:`FenwickState`) against its slots."""
    fields = ("pending_keys", "pending_gates", "pending_from")
    if any(getattr(state, f) is None for f in fields):
        raise ValueError(f"{name} must set all of {fields} or none, got "
                         f"{[f for f in fields if getattr(state, f) is None]} unset")
    N, H = state.states.shape[:2]
    F = state.pending_keys.shape[2] if state.pending_keys.ndim == 4 else 0
    expected = {"pending_keys": (N, H, F, K), "pending_gates": (N, H, F, 2), "pending_from": (N,)}
    for f, shape in expected.items():
        x = getattr(state, f)
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}.{f} has shape {tuple(x.shape)}, expected {list(shape)}")
        want = torch.int64 if f == "pending_from" else torch.float32
        if x.dtype != want:
            raise TypeError(f"{name}.{f} must be {want}, got {x.dtype}")
        if x.device != state.states.device:
            raise ValueError(f"{name}.{f} is on {x.device} but {name}.states is on {state.states.device}")
    if F < 2:
        raise ValueError(f"{name}.pending_keys must hold F >= 2 transitions, got F = {F}")


def updatable_in_place(state: FenwickState | None) -> bool:
    """Whether ``inplace_final_state=True`` accepts ``state`` (every state the ops return does)."""
    return (state is not None and state.states.dtype == torch.float32 and state.states.is_contiguous()
            and state.positions.dtype == torch.int64)


def check_inplace_state(state: FenwickState | None) -> None:
    """``inplace_final_state=True`` writes the final state into ``state``'s own tensors."""
    if updatable_in_place(state):
        return
    if state is None:
        raise ValueError("inplace_final_state=True needs an initial_state to update, got None")
    if state.states.dtype != torch.float32 or not state.states.is_contiguous():
        raise ValueError(
            "inplace_final_state=True needs initial_state.states to be a contiguous float32 tensor (the "
            f"states the ops return), got {state.states.dtype}, contiguous={state.states.is_contiguous()}"
        )
    if state.positions.dtype != torch.int64:
        raise TypeError(f"inplace_final_state=True needs int64 initial_state.positions, got {state.positions.dtype}")


def finish_inplace(state: FenwickState, final: FenwickState | None, lengths: torch.Tensor | int,
                   kept_pending: bool = False) -> FenwickState:
    """Makes ``state`` the final state: ``final``'s values copied in (paths that computed a new
    one), and its positions advanced by ``lengths`` (``[N]`` or one for all) on the device.
    ``kept_pending``: the call left transitions pending in ``state`` (else none are, at the new positions)."""
    if final is not None:
        state.states.copy_(final.states)
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.to(state.positions.device, torch.int64)
    state.positions.add_(lengths)
    if state.has_pending and not kept_pending:
        state.pending_from.copy_(state.positions)
    return state
