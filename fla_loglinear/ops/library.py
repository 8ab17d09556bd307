"""The public ops as PyTorch custom ops, which is how ``torch.compile`` sees them.

Under ``torch.compile`` every public op routes here (a one-line branch at the top of each public
function): Dynamo records one node per op and Inductor never traces into the level arithmetic
(integer bit tricks it failed to compile for the CPU) nor into host-side layout code.  Eager calls
do not come here: a decode step is mostly host time, and the dispatcher would add to it.

A :class:`~fla_loglinear.FenwickState` cannot cross the dispatcher, so it crosses as its tensors
(``states``, ``positions`` and the optional ``pending_*``) and is rebuilt on both sides.  Each op's
implementation is the eager public function itself (the training op's: its forward launcher), on
whatever device the tensors are (one implementation serves CPU and CUDA): it runs every argument
check again, the value checks included, which the traced wrapper skips (they read tensors back to
the host).

Training ops have a backward op of their own.  The scalar-gated op's calls its backward launcher on
the Triton path.  The Gated DeltaNet op has two routes.  Training inputs on the Triton path (``B``
sequences of ``T`` tokens, no initial state, no ``cu_seqlens``) take a training op whose outputs
include the forward's residuals, whose shapes then follow from the inputs' (``saved_like``): the
backward reads them, as eager's does.  Any other call (a state or packed sequences, whose chunk layout
depends on values the fake cannot read) takes an op whose backward recomputes the forward under
autograd and differentiates it, so it pays one more forward of the op than eager.  The PyTorch paths
(CPU) of both ops recompute too, as their eager backward does.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from fla_loglinear.ops.log_linear_attn.args import check_log_linear_attn_args, check_log_linear_attn_decode_args
from fla_loglinear.ops.log_linear_attn.chunk import ChunkLayout, chunk_log_linear_attn, chunk_log_linear_attn_bwd
from fla_loglinear.ops.log_linear_attn.fused_recurrent import fused_recurrent_log_linear_attn
from fla_loglinear.ops.log_linear_gated_delta_rule.args import check_log_linear_gated_delta_rule_args
from fla_loglinear.ops.log_linear_gated_delta_rule.chunk import (
    chunk_log_linear_gated_delta_rule,
    chunk_log_linear_gated_delta_rule_bwd,
    chunk_log_linear_gated_delta_rule_fwd,
    local_inputs,
    on_value_heads,
    plan_for_call,
    saved_like,
    state_in,
    state_out,
    use_kernels,
)
from fla_loglinear.ops.log_linear_gated_delta_rule.fused_recurrent import (
    check_decode_args,
    fused_recurrent_log_linear_gated_delta_rule,
)
from fla_loglinear.ops.log_linear_gated_delta_rule.gate import GatedDeltaRuleOptions, parse_options, preprocess_inputs
from fla_loglinear.ops.log_linear_gated_delta_rule.layout import make_layout
from fla_loglinear.ops.log_linear_gated_delta_rule.pending import attach_pending
from fla_loglinear.ops.triton_env import use_triton
from fla_loglinear.state import FenwickState

__all__ = [
    "compiled_chunk_log_linear_attn",
    "compiled_fused_recurrent_log_linear_attn",
    "compiled_chunk_log_linear_gated_delta_rule",
    "compiled_fused_recurrent_log_linear_gated_delta_rule",
]

_NS = "fla_loglinear"
_PENDING = ("pending_keys", "pending_gates", "pending_from")


def _flat(state: FenwickState | None) -> tuple[Tensor | None, ...]:
    """``(states, positions, pending_keys, pending_gates, pending_from)``, ``None`` where absent."""
    if state is None:
        return (None,) * 5
    return (state.states, state.positions, *(getattr(state, f) for f in _PENDING))


def _state(states, positions, pending_keys=None, pending_gates=None, pending_from=None) -> FenwickState | None:
    if states is None:
        return None
    return FenwickState(states, positions, pending_keys, pending_gates, pending_from)


def _none(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Stands for an absent output (custom op outputs are tensors), on the device of ``like``."""
    return like.new_empty(0, dtype=dtype)


def _dense(x: Tensor) -> Tensor:
    """An output as its fake says it is: contiguous (Inductor checks the strides)."""
    return x.contiguous()


def _like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape)


def _or_none(x: Tensor | None) -> Tensor | None:
    return None if x is None or x.numel() == 0 else x


def _seq_count(B: int, cu_seqlens: Tensor | None) -> int:
    return B if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _final_fake(q: Tensor, N: int, H: int, L: int, K: int, V: int, wanted: bool) -> tuple[Tensor, Tensor]:
    if not wanted:
        return q.new_empty(0, dtype=torch.float32), q.new_empty(0, dtype=torch.int64)
    return q.new_empty(N, H, L, K, V, dtype=torch.float32), q.new_empty(N, dtype=torch.int64)


def _final_real(final: FenwickState | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """A new final state's tensors (in-place results come back through the mutated arguments)."""
    if final is None:
        return _none(like, torch.float32), _none(like, torch.int64)
    return _dense(final.states), _dense(final.positions)


@contextlib.contextmanager
def _autograd_on():
    """Autograd inside an op's implementation, which runs with autograd's dispatch key excluded."""
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(torch._C.DispatchKey.AutogradFunctionality, False):
        yield


def _vjp(fn, inputs: list[Tensor | None], outputs_of, grads: list[Tensor | None]) -> list[Tensor | None]:
    """Gradients of ``outputs_of(fn(*inputs))`` for the floating inputs, by recomputing ``fn`` under autograd."""
    with _autograd_on():
        leaves = [x.detach().requires_grad_() if x is not None and x.is_floating_point() else x for x in inputs]
        outs = outputs_of(fn(*leaves))
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None and o.requires_grad]
        diff = [x for x in leaves if x is not None and x.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], diff, [g for _, g in pairs], allow_unused=True,
                                  materialize_grads=True) if pairs else [torch.zeros_like(x) for x in diff]
    it = iter(got)
    return [next(it) if x is not None and x.requires_grad else None for x in leaves]


def _gate_params(A_log: Tensor | None, dt_bias: Tensor | None) -> dict:
    """The Gated DeltaNet ops' gate tensors as keyword options, left out where absent (the ops reject
    them without ``use_gate_in_kernel``)."""
    return {name: x for name, x in (("A_log", A_log), ("dt_bias", dt_bias)) if x is not None}


def _outputs(result) -> tuple[Tensor, Tensor | None]:
    o, final = result
    return o, None if final is None else final.states


# ---------------------------------------------------------------------------------------------------
# scalar-gated (Mamba-2 form), chunked


@torch.library.custom_op(f"{_NS}::chunk_log_linear_attn", mutates_args=())
def _chunk_attn(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, level_scales: Tensor, states: Optional[Tensor],
    positions: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float, output_final_state: bool,
    force_triton: bool, chunk_size: int, scan_segment: int,
) -> tuple[Tensor, Tensor, Tensor]:
    o, final = chunk_log_linear_attn(
        q, k, v, g, level_scales, _state(states, positions), output_final_state, cu_seqlens, scale,
        _use_triton=force_triton, _chunk_size=chunk_size, _scan_segment=scan_segment,
    )
    return (_dense(o), *_final_real(final, q))


@_chunk_attn.register_fake
def _(q, k, v, g, level_scales, states, positions, cu_seqlens, scale, output_final_state, force_triton,
      chunk_size, scan_segment):
    H, V = v.shape[-2:]
    return (_like(v), *_final_fake(q, _seq_count(q.shape[0], cu_seqlens), H, level_scales.shape[-1],
                                              q.shape[-1], V, output_final_state))


@torch.library.custom_op(f"{_NS}::chunk_log_linear_attn_bwd", mutates_args=())
def _chunk_attn_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, level_scales: Tensor, states: Optional[Tensor],
    positions: Optional[Tensor], cu_seqlens: Optional[Tensor], ht: Tensor, do: Tensor, dht: Optional[Tensor],
    scale: float, force_triton: bool, chunk_size: int, scan_segment: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if use_triton(q, force_triton):
        # what ChunkLogLinearAttnFunction.backward does, on the inputs that its forward saw
        B, T = q.shape[:2]
        state = _state(states, positions)
        h0 = None if state is None else state.without_empty_slots().states.float().contiguous()
        layout = ChunkLayout(B, T, cu_seqlens, positions, chunk_size, q.device)
        q, k, v, g, level_scales = (x.contiguous() for x in (q, k, v, g, level_scales))
        dq, dk, dv, dg, dlam, dh0 = chunk_log_linear_attn_bwd(
            q, k, v, g, level_scales, h0, _or_none(ht), do.contiguous(), None if dht is None else dht.contiguous(),
            layout, scale, chunk_size, scan_segment, h0 is not None,
        )
        # the empty-slot mask is its own adjoint
        dstates = _none(q) if dh0 is None else FenwickState(dh0, positions).without_empty_slots().states.to(states.dtype)
        return tuple(_dense(x) for x in (dq, dk, dv, dg, dlam, dstates))

    def fn(q, k, v, g, level_scales, states):
        return chunk_log_linear_attn(q, k, v, g, level_scales, _state(states, positions), dht is not None,
                                     cu_seqlens, scale, _chunk_size=chunk_size)

    grads = _vjp(fn, [q, k, v, g, level_scales, states], _outputs, [do, dht])
    return tuple(_none(q) if x is None else _dense(x) for x in grads)


@_chunk_attn_bwd.register_fake
def _(q, k, v, g, level_scales, states, positions, cu_seqlens, ht, do, dht, scale, force_triton, chunk_size,
      scan_segment):
    dstates = q.new_empty(0) if states is None else _like(states)
    return tuple(_like(x) for x in (q, k, v, g, level_scales)) + (dstates,)


def _chunk_attn_setup(ctx, inputs, output):
    q, k, v, g, level_scales, states, positions, cu_seqlens, scale, _, force_triton, chunk_size, scan_segment = inputs
    ctx.save_for_backward(q, k, v, g, level_scales, states, positions, cu_seqlens, output[1])
    ctx.options = (scale, force_triton, chunk_size, scan_segment)


def _chunk_attn_backward(ctx, do, dht, _dpos):
    q, k, v, g, level_scales, states, positions, cu_seqlens, ht = ctx.saved_tensors
    scale, force_triton, chunk_size, scan_segment = ctx.options
    if do is None:
        do = torch.zeros_like(v)
    grads = torch.ops.fla_loglinear.chunk_log_linear_attn_bwd(
        q, k, v, g, level_scales, states, positions, cu_seqlens, ht, do, _or_none(dht), scale, force_triton,
        chunk_size, scan_segment,
    )
    dq, dk, dv, dg, dlam, dstates = grads
    return dq, dk, dv, dg, dlam, _or_none(dstates), None, None, None, None, None, None, None


_chunk_attn.register_autograd(_chunk_attn_backward, setup_context=_chunk_attn_setup)


def compiled_chunk_log_linear_attn(q, k, v, g, level_scales, initial_state, output_final_state, cu_seqlens, scale,
                                   _use_triton, _chunk_size, _scan_segment):
    """:func:`~fla_loglinear.ops.chunk_log_linear_attn` as Dynamo traces it."""
    K = check_log_linear_attn_args(q, k, v, g, level_scales, initial_state, cu_seqlens)[4]
    scale = K ** -0.5 if scale is None else float(scale)
    states, positions = _flat(initial_state)[:2]
    o, ht, pos = _chunk_attn(q, k, v, g, level_scales, states, positions, cu_seqlens, scale, bool(output_final_state),
                             bool(_use_triton), int(_chunk_size), int(_scan_segment))
    return o, (FenwickState(ht, pos) if output_final_state else None)


# ---------------------------------------------------------------------------------------------------
# scalar-gated, decoding (forward only; in place when asked)


@torch.library.custom_op(f"{_NS}::fused_recurrent_log_linear_attn", mutates_args=("states", "positions"))
def _recurrent_attn(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, level_scales: Tensor, states: Optional[Tensor],
    positions: Optional[Tensor], cu_seqlens: Optional[Tensor], scale: float, output_final_state: bool,
    inplace_final_state: bool, force_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        o, final = fused_recurrent_log_linear_attn(
            q, k, v, g, level_scales, _state(states, positions), output_final_state, cu_seqlens, scale,
            inplace_final_state, _use_triton=force_triton,
        )
    return (_dense(o), *_final_real(None if inplace_final_state else final, q))


@_recurrent_attn.register_fake
def _(q, k, v, g, level_scales, states, positions, cu_seqlens, scale, output_final_state, inplace_final_state,
      force_triton):
    H, V = v.shape[-2:]
    return (_like(v), *_final_fake(q, _seq_count(q.shape[0], cu_seqlens), H, level_scales.shape[-1],
                                              q.shape[-1], V, output_final_state and not inplace_final_state))


def compiled_fused_recurrent_log_linear_attn(q, k, v, g, level_scales, initial_state, output_final_state, cu_seqlens,
                                             scale, inplace_final_state, _use_triton):
    """:func:`~fla_loglinear.ops.fused_recurrent_log_linear_attn` as Dynamo traces it."""
    K = check_log_linear_attn_decode_args(q, k, v, g, level_scales, initial_state, cu_seqlens, inplace_final_state)[4]
    scale = K ** -0.5 if scale is None else float(scale)
    states, positions = _flat(initial_state)[:2]
    o, ht, pos = _recurrent_attn(q, k, v, g, level_scales, states, positions, cu_seqlens, scale,
                                 bool(output_final_state), bool(inplace_final_state), bool(_use_triton))
    if not output_final_state:
        return o, None
    return o, (initial_state if inplace_final_state else FenwickState(ht, pos))


# ---------------------------------------------------------------------------------------------------
# gated delta rule (Gated DeltaNet form), chunked


@torch.library.custom_op(f"{_NS}::chunk_log_linear_gated_delta_rule", mutates_args=())
def _chunk_gdn(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, level_scales: Tensor, A_log: Optional[Tensor],
    dt_bias: Optional[Tensor], states: Optional[Tensor], positions: Optional[Tensor],
    pending_keys: Optional[Tensor], pending_gates: Optional[Tensor], pending_from: Optional[Tensor],
    cu_seqlens: Optional[Tensor], scale: float, output_final_state: bool, use_qk_l2norm_in_kernel: bool,
    use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool, use_gate_in_kernel: bool, state_v_first: bool,
    force_triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    o, final = _chunk_gdn_eager(q, k, v, g, beta, level_scales, A_log, dt_bias, states, positions, pending_keys,
                                pending_gates, pending_from, cu_seqlens, scale, output_final_state,
                                use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                                use_gate_in_kernel, state_v_first, force_triton)
    return (_dense(o), *_final_real(final, q))


def _chunk_gdn_eager(q, k, v, g, beta, level_scales, A_log, dt_bias, states, positions, pending_keys, pending_gates,
                     pending_from, cu_seqlens, scale, output_final_state, use_qk_l2norm_in_kernel,
                     use_beta_sigmoid_in_kernel, allow_neg_eigval, use_gate_in_kernel, state_v_first, force_triton):
    return chunk_log_linear_gated_delta_rule(
        q, k, v, g, beta, level_scales, scale,
        _state(states, positions, pending_keys, pending_gates, pending_from), output_final_state,
        use_qk_l2norm_in_kernel, cu_seqlens, use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel,
        allow_neg_eigval=allow_neg_eigval, use_gate_in_kernel=use_gate_in_kernel, state_v_first=state_v_first,
        _force_triton=force_triton, **_gate_params(A_log, dt_bias),
    )


@_chunk_gdn.register_fake
def _(q, k, v, g, beta, level_scales, A_log, dt_bias, states, positions, pending_keys, pending_gates, pending_from,
      cu_seqlens, scale, output_final_state, *flags):
    state_v_first = flags[4]
    HV, V = v.shape[-2:]
    K, L = q.shape[-1], level_scales.shape[-1]
    ht, pos = _final_fake(q, _seq_count(q.shape[0], cu_seqlens), HV, L, K, V, output_final_state)
    if output_final_state and state_v_first:
        ht = ht.transpose(-1, -2).contiguous()
    return _like(v), ht, pos


@torch.library.custom_op(f"{_NS}::chunk_log_linear_gated_delta_rule_bwd", mutates_args=())
def _chunk_gdn_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, level_scales: Tensor, A_log: Optional[Tensor],
    dt_bias: Optional[Tensor], states: Optional[Tensor], positions: Optional[Tensor],
    pending_keys: Optional[Tensor], pending_gates: Optional[Tensor], pending_from: Optional[Tensor],
    cu_seqlens: Optional[Tensor], do: Tensor, dht: Optional[Tensor], scale: float,
    use_qk_l2norm_in_kernel: bool, use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool,
    use_gate_in_kernel: bool, state_v_first: bool, force_triton: bool,
) -> list[Tensor]:
    rest = (positions, pending_keys, pending_gates, pending_from, cu_seqlens, scale, dht is not None,
            use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval, use_gate_in_kernel, state_v_first,
            force_triton)

    def fn(q, k, v, g, beta, level_scales, A_log, dt_bias, states):
        return _chunk_gdn_eager(q, k, v, g, beta, level_scales, A_log, dt_bias, states, *rest)

    grads = _vjp(fn, [q, k, v, g, beta, level_scales, A_log, dt_bias, states],
                 _outputs, [do, dht])
    return [_none(q) if x is None else _dense(x) for x in grads]


@_chunk_gdn_bwd.register_fake
def _(q, k, v, g, beta, level_scales, A_log, dt_bias, states, *rest):
    return [q.new_empty(0) if x is None else _like(x)
            for x in (q, k, v, g, beta, level_scales, A_log, dt_bias, states)]


def _chunk_gdn_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:14])
    # scale and the flags; output_final_state is whether a state gradient comes
    ctx.options = inputs[14:15] + inputs[16:]
    ctx.num_inputs = len(inputs)


def _chunk_gdn_backward(ctx, do, dht, _dpos):
    saved = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(saved[2])
    scale, *flags = ctx.options
    grads = torch.ops.fla_loglinear.chunk_log_linear_gated_delta_rule_bwd(*saved, do, _or_none(dht), scale, *flags)
    return (*(_or_none(x) for x in grads), *(None,) * (ctx.num_inputs - len(grads)))


_chunk_gdn.register_autograd(_chunk_gdn_backward, setup_context=_chunk_gdn_setup)


# ---------------------------------------------------------------------------------------------------
# gated delta rule, chunked, for training on the Triton path: B sequences of T tokens from position 0
# (no initial state, no cu_seqlens), where every residual's shape follows from the inputs' shapes, so
# the forward hands its residuals to the backward (through the op's outputs) instead of the backward
# recomputing the forward.  The option preprocessing (q / k normalisation, gate, beta sigmoid, the
# q / k heads repeated onto the value heads) is redone in the backward, under autograd, to carry the
# kernels' gradients back to the raw inputs; the residuals that are the preprocessed inputs themselves
# (custom op outputs may not alias inputs) are rebuilt from them there too.


def _preprocess(q, k, g, beta, A_log, dt_bias, HV: int, flags):
    use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval, use_gate_in_kernel = flags
    opts = GatedDeltaRuleOptions(use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
                                 use_gate_in_kernel, A_log, dt_bias)
    q, k, g, beta = preprocess_inputs(q, k, g, beta, opts)
    return (*on_value_heads(q, k, HV), g, beta)


@torch.library.custom_op(f"{_NS}::chunk_log_linear_gated_delta_rule_train", mutates_args=())
def _gdn_train(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, level_scales: Tensor, A_log: Optional[Tensor],
    dt_bias: Optional[Tensor], scale: float, use_qk_l2norm_in_kernel: bool, use_beta_sigmoid_in_kernel: bool,
    allow_neg_eigval: bool, use_gate_in_kernel: bool,
) -> list[Tensor]:
    flags = (use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval, use_gate_in_kernel)
    with torch.no_grad():
        qh, kh, gh, bh = _preprocess(q, k, g, beta, A_log, dt_bias, v.shape[2], flags)
        o, ht, _, residuals = chunk_log_linear_gated_delta_rule_fwd(qh, kh, v, gh, bh, level_scales, scale, None,
                                                                    None, None)
    return [_dense(o), _dense(ht), *(_none(q) if x is None else _dense(x) for x in residuals[6:])]


@_gdn_train.register_fake
def _(q, k, v, g, beta, level_scales, A_log, dt_bias, scale, *flags):
    B, T, HV, V = v.shape
    K, L = q.shape[-1], level_scales.shape[-1]
    # the kernels' plan, as the real call picks it (the fused local part or PyTorch: different residuals)
    plan = plan_for_call(q, v, B * HV, None)
    qh = q.new_empty(B, T, HV, K)
    return [_like(v), q.new_empty(B, HV, L, K, V, dtype=torch.float32), *saved_like(qh, k, v, level_scales, plan)]


@torch.library.custom_op(f"{_NS}::chunk_log_linear_gated_delta_rule_train_bwd", mutates_args=())
def _gdn_train_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, level_scales: Tensor, A_log: Optional[Tensor],
    dt_bias: Optional[Tensor], saved: list[Tensor], do: Optional[Tensor], dht: Optional[Tensor], scale: float,
    use_qk_l2norm_in_kernel: bool, use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool,
    use_gate_in_kernel: bool,
) -> list[Tensor]:
    flags = (use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval, use_gate_in_kernel)
    B, T = q.shape[:2]
    raw = [q, k, g, beta, A_log, dt_bias]
    # an op's implementation runs below autograd (its dispatch key excluded): the preprocessing's
    # gradients, and the PyTorch local part's backward, need it back
    with _autograd_on():
        leaves = [None if x is None else x.detach().requires_grad_(x.is_floating_point()) for x in raw]
        pre = _preprocess(*leaves, v.shape[2], flags)
        qh, kh, gh, bh = (x.detach() for x in pre)
        layout = make_layout(B, T, None, None, q.device)
        fused = saved[0].numel() > 0  # the fused local part keeps its WY factors
        local = local_inputs((qh, kh, v, gh, bh, level_scales), layout, fused)
        residuals = (*local, *(_or_none(x) for x in saved))
        dqh, dkh, dv, dgh, dbh, dlam, _ = chunk_log_linear_gated_delta_rule_bwd(do, dht, residuals, scale, None,
                                                                               None, B, T)
        diff = [x for x in leaves if x is not None and x.requires_grad]
        got = iter(torch.autograd.grad(pre, diff, (dqh, dkh, dgh, dbh), allow_unused=True, materialize_grads=True))
    dq, dk, dg, dbeta, dA, ddt = (next(got) if x is not None and x.requires_grad else None for x in leaves)
    return [_none(q) if x is None else _dense(x) for x in (dq, dk, dv, dg, dbeta, dlam, dA, ddt)]


@_gdn_train_bwd.register_fake
def _(q, k, v, g, beta, level_scales, A_log, dt_bias, *rest):
    return [q.new_empty(0) if x is None else _like(x) for x in (q, k, v, g, beta, level_scales, A_log, dt_bias)]


def _gdn_train_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], *output[2:])
    ctx.options = inputs[8:]


def _gdn_train_backward(ctx, grads):
    q, k, v, g, beta, level_scales, A_log, dt_bias, *saved = ctx.saved_tensors
    do, dht = grads[:2]
    grads = torch.ops.fla_loglinear.chunk_log_linear_gated_delta_rule_train_bwd(
        q, k, v, g, beta, level_scales, A_log, dt_bias, saved, do, dht, *ctx.options)
    return (*(_or_none(x) for x in grads), *(None,) * len(ctx.options))


_gdn_train.register_autograd(_gdn_train_backward, setup_context=_gdn_train_setup)


def compiled_chunk_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale, initial_state,
                                               output_final_state, use_qk_l2norm_in_kernel, cu_seqlens, kwargs):
    """:func:`~fla_loglinear.ops.chunk_log_linear_gated_delta_rule` as Dynamo traces it."""
    opts = parse_options("chunk_log_linear_gated_delta_rule", use_qk_l2norm_in_kernel, kwargs)
    if opts.plan is not None:
        raise ValueError("chunk_log_linear_gated_delta_rule: the private option _plan (a GDNLaunchPlan) is not "
                         "supported under torch.compile (it cannot cross the custom op); call the op eagerly with it")
    B, T, H, HV, K, V, L, N = check_log_linear_gated_delta_rule_args(
        q, k, v, g, beta, level_scales, initial_state=state_in(initial_state, opts.state_v_first),
        cu_seqlens=cu_seqlens, pending=True,
    )
    kernels = use_kernels(q, opts.force_triton, K, L)
    scale = K ** -0.5 if scale is None else float(scale)
    if kernels and initial_state is None and cu_seqlens is None:
        o, ht = _gdn_train(q, k, v, g, beta, level_scales, opts.A_log, opts.dt_bias, scale,
                           opts.use_qk_l2norm_in_kernel, opts.use_beta_sigmoid_in_kernel, opts.allow_neg_eigval,
                           opts.use_gate_in_kernel)[:2]
        if not output_final_state:
            return o, None
        return o, state_out(FenwickState(ht, torch.full((B,), T, dtype=torch.int64, device=q.device)),
                            opts.state_v_first)
    o, ht, pos = _chunk_gdn(
        q, k, v, g, beta, level_scales, opts.A_log, opts.dt_bias, *_flat(initial_state), cu_seqlens, scale,
        bool(output_final_state), opts.use_qk_l2norm_in_kernel, opts.use_beta_sigmoid_in_kernel, opts.allow_neg_eigval,
        opts.use_gate_in_kernel, opts.state_v_first, opts.force_triton,
    )
    return o, (FenwickState(ht, pos) if output_final_state else None)


# ---------------------------------------------------------------------------------------------------
# gated delta rule, decoding (forward only; in place when asked, with pending transitions on the Triton path)


@torch.library.custom_op(f"{_NS}::fused_recurrent_log_linear_gated_delta_rule",
                         mutates_args=("states", "positions", "pending_keys", "pending_gates", "pending_from"))
def _recurrent_gdn(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, level_scales: Tensor, A_log: Optional[Tensor],
    dt_bias: Optional[Tensor], states: Optional[Tensor], positions: Optional[Tensor],
    pending_keys: Optional[Tensor], pending_gates: Optional[Tensor], pending_from: Optional[Tensor],
    cu_seqlens: Optional[Tensor], scale: float, output_final_state: bool, use_qk_l2norm_in_kernel: bool,
    use_beta_sigmoid_in_kernel: bool, allow_neg_eigval: bool, use_gate_in_kernel: bool, state_v_first: bool,
    force_triton: bool, inplace_final_state: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        o, final = fused_recurrent_log_linear_gated_delta_rule(
            q, k, v, g, beta, level_scales, scale,
            _state(states, positions, pending_keys, pending_gates, pending_from), output_final_state,
            use_qk_l2norm_in_kernel, cu_seqlens, inplace_final_state,
            use_beta_sigmoid_in_kernel=use_beta_sigmoid_in_kernel, allow_neg_eigval=allow_neg_eigval,
            use_gate_in_kernel=use_gate_in_kernel, state_v_first=state_v_first, _force_triton=force_triton, **_gate_params(A_log, dt_bias),
        )
    return (_dense(o), *_final_real(None if inplace_final_state else final, q))


@_recurrent_gdn.register_fake
def _(q, k, v, g, beta, level_scales, A_log, dt_bias, states, positions, pending_keys, pending_gates, pending_from,
      cu_seqlens, scale, output_final_state, use_qk_l2norm_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval,
      use_gate_in_kernel, state_v_first, force_triton, inplace_final_state):
    HV, V = v.shape[-2:]
    K, L = q.shape[-1], level_scales.shape[-1]
    ht, pos = _final_fake(q, _seq_count(q.shape[0], cu_seqlens), HV, L, K, V,
                          output_final_state and not inplace_final_state)
    if ht.numel() and state_v_first:
        ht = ht.transpose(-1, -2).contiguous()
    return _like(v), ht, pos


def compiled_fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, level_scales, scale, initial_state,
                                                         output_final_state, use_qk_l2norm_in_kernel, cu_seqlens,
                                                         inplace_final_state, kwargs):
    """:func:`~fla_loglinear.ops.fused_recurrent_log_linear_gated_delta_rule` as Dynamo traces it."""
    opts, _, (B, T, H, HV, K, V, L, N) = check_decode_args(
        q, k, v, g, beta, level_scales, initial_state, use_qk_l2norm_in_kernel, cu_seqlens, inplace_final_state, kwargs)
    # the log of pending transitions is new tensors on the state object: made here, outside the op,
    # so that the op only writes into tensors it was given (see the eager function's keep_pending)
    if inplace_final_state and use_kernels(q, opts.force_triton, K, L) and L > 1 and B * T == N:
        attach_pending(initial_state, K)
    scale = K ** -0.5 if scale is None else float(scale)
    o, ht, pos = _recurrent_gdn(
        q, k, v, g, beta, level_scales, opts.A_log, opts.dt_bias, *_flat(initial_state), cu_seqlens, scale,
        bool(output_final_state), opts.use_qk_l2norm_in_kernel, opts.use_beta_sigmoid_in_kernel, opts.allow_neg_eigval,
        opts.use_gate_in_kernel, opts.state_v_first, opts.force_triton, bool(inplace_final_state),
    )
    if not output_final_state:
        return o, None
    return o, (initial_state if inplace_final_state else FenwickState(ht, pos))
