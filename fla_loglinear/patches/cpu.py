"""Make fla's Triton-only modules run on the CPU: `patch_cpu()` / `unpatch_cpu()`.

A call takes the PyTorch path (fla_loglinear.patches.cpu_ops) only when every tensor argument is a
CPU tensor; any other call reaches fla's original code with the same arguments, so GPU behaviour
is unchanged. Where fla has a dispatch point (`fla.backends.dispatch`) a CPU backend is registered
on it; elsewhere the function or method is replaced by a device switch, in every loaded fla module
that holds it (names bound with `from ... import ...` inside fla included; modules outside fla are
never touched), and unpatch_cpu() puts back exactly the originals it replaced.

Covered: RMSNorm / LayerNorm / GroupNorm (and their prenorm-residual forms), FusedRMSNormGated and
the other gated norms, Mamba-2's RMSNormGated / rmsnorm_fn, l2norm, swiglu / swiglu_linear
(GatedMLP), ShortConvolution / causal_conv1d (prefill, varlen, cached decoding),
FusedCrossEntropyLoss, chunk_gated_delta_rule and fused_recurrent_gated_delta_rule, and
LogLinearMamba2 (whose forward refuses CPU tensors outright). Mamba-2 itself needs no patch beyond
its norm: fla's layer already falls back to its `torch_forward` off CUDA.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import fla.backends as fla_backends
from fla.backends import BaseBackend
from fla_loglinear.patches import cpu_ops

__all__ = ['patch_cpu', 'unpatch_cpu', 'is_cpu_patched', 'CPUBackend']

_MISSING = object()


class CPUBackend(BaseBackend):
    """fla backend holding the PyTorch CPU implementations; its verifier accepts CPU calls only."""

    backend_type = 'cpu_torch'
    # ahead of every accelerator backend, which it never shadows: it rejects non-CPU calls.
    priority = -1


def _tensors(args: tuple, kwargs: dict):
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            yield value


def on_cpu(args: tuple, kwargs: dict) -> bool:
    """True when there is at least one tensor argument and all of them are CPU tensors."""
    devices = {t.device.type for t in _tensors(args, kwargs)}
    return devices == {'cpu'}


def _cpu_verifier(*args, **kwargs) -> tuple[bool, str | None]:
    if on_cpu(args, kwargs):
        return True, None
    return False, "not all tensor arguments are CPU tensors"


class _GatedDeltaRuleCPU(CPUBackend):
    """Adapter for the 'gated_delta_rule' operation registry, which several functions share:
    only `chunk_gated_delta_rule` has an implementation here, the others fall through."""

    def chunk_gated_delta_rule_verifier(self, *args, **kwargs):
        return _cpu_verifier(*args, **kwargs)

    def chunk_gated_delta_rule(self, *args, **kwargs):
        return cpu_ops.chunk_gated_delta_rule(*args, **kwargs)


# (module, attribute, CPU implementation) for functions fla dispatches through fla.backends.
_DISPATCHED = [
    ('fla.modules.norm.layernorm', 'layer_norm_fwd', cpu_ops.layer_norm_fwd),
    ('fla.modules.norm.layernorm', 'layer_norm_bwd', cpu_ops.layer_norm_bwd),
    ('fla.modules.norm.fused_norm_gate', 'layer_norm_gated_fwd', cpu_ops.layer_norm_gated_fwd),
    ('fla.modules.norm.fused_norm_gate', 'layer_norm_gated_bwd', cpu_ops.layer_norm_gated_bwd),
    ('fla.modules.norm.l2norm', 'l2norm_fwd', cpu_ops.l2norm_fwd),
    ('fla.modules.norm.l2norm', 'l2norm_bwd', cpu_ops.l2norm_bwd),
    ('fla.modules.activations.ops', 'sigmoid_fwd', cpu_ops.sigmoid_fwd),
    ('fla.modules.activations.ops', 'sigmoid_bwd', cpu_ops.sigmoid_bwd),
    ('fla.modules.activations.ops', 'swish_fwd', cpu_ops.swish_fwd),
    ('fla.modules.activations.ops', 'swish_bwd', cpu_ops.swish_bwd),
    ('fla.modules.activations.ops', 'logsigmoid_fwd', cpu_ops.logsigmoid_fwd),
    ('fla.modules.activations.ops', 'logsigmoid_bwd', cpu_ops.logsigmoid_bwd),
    ('fla.modules.activations.ops', 'swiglu_fwd', cpu_ops.swiglu_fwd),
    ('fla.modules.activations.ops', 'swiglu_fwdbwd', cpu_ops.swiglu_fwdbwd),
    ('fla.modules.causal_conv1d.ops', 'causal_conv1d_fwd', cpu_ops.causal_conv1d_fwd),
    ('fla.modules.causal_conv1d.ops', 'causal_conv1d_bwd', cpu_ops.causal_conv1d_bwd),
    ('fla.modules.causal_conv1d.ops', 'causal_conv1d_update_states', cpu_ops.causal_conv1d_update_states),
    ('fla.modules.causal_conv1d.ops', 'causal_conv1d_update', cpu_ops.causal_conv1d_update),
    ('fla.modules.fused_cross_entropy.ops', 'cross_entropy_fwd', cpu_ops.cross_entropy_fwd),
    ('fla.modules.fused_cross_entropy.ops', 'cross_entropy_bwd', cpu_ops.cross_entropy_bwd),
    ('fla.modules.fused_linear_cross_entropy.ops', 'fused_linear_cross_entropy_bwd',
     cpu_ops.fused_linear_cross_entropy_bwd),
]

# operation name -> (adapter class, [(module, attribute, CPU implementation)] for the dispatch-off fallback)
_OPERATIONS = {
    'gated_delta_rule': (
        _GatedDeltaRuleCPU,
        [('fla.ops.gated_delta_rule.chunk', 'chunk_gated_delta_rule', cpu_ops.chunk_gated_delta_rule)],
    ),
}

# functions without a dispatch point: replaced by a device switch wherever they are bound.
_SWITCHED = [
    ('fla.ops.gated_delta_rule.fused_recurrent', 'fused_recurrent_gated_delta_rule',
     cpu_ops.fused_recurrent_gated_delta_rule),
    ('fla.modules.norm.layernorm_gated', 'layer_norm_fwd', cpu_ops.gated_group_norm_fwd),
    ('fla.modules.norm.layernorm_gated', 'layer_norm_bwd', cpu_ops.gated_group_norm_bwd),
    ('fla.ops.log_linear_attn.chunk', 'chunk_log_linear_attn', cpu_ops.chunk_log_linear_attn),
]


def _fused_cross_entropy_forward(self, input: torch.Tensor, target: torch.Tensor):
    """FusedCrossEntropyLoss.forward for CPU tensors: fla's body without its accelerator assert
    (the kernels it reaches, cross_entropy_fwd / _bwd, have CPU backends)."""
    from fla.modules.fused_cross_entropy.ops import cross_entropy_loss
    loss, z_loss = cross_entropy_loss(
        logits=input,
        target=target,
        label_smoothing=self.label_smoothing,
        logit_scale=self.logit_scale,
        lse_square_scale=self.lse_square_scale,
        logit_softcapping=self.logit_softcapping,
        ignore_index=self.ignore_index,
        inplace_backward=self.inplace_backward,
        process_group=self.process_group,
    )
    if self.reduction != 'none':
        loss, z_loss = loss.sum(), z_loss.sum()
        if self.reduction == 'mean':
            total = (target != self.ignore_index).sum()
            loss, z_loss = loss / total, z_loss / total
    return (loss, z_loss) if self.return_z_loss else loss


def _log_linear_mamba2_forward(self, hidden_states, attention_mask=None, past_key_values=None,
                               use_cache=False, output_attentions=False, **kwargs):
    """LogLinearMamba2.forward for CPU tensors: fla's own layer body, whose kernels all have CPU paths
    once patched (fla's forward refuses non-CUDA weights before reaching them)."""
    from fla.layers.utils import get_layer_cache, update_layer_cache
    last_state = get_layer_cache(self, past_key_values)
    output, conv_state, state = self.cuda_kernels_forward(hidden_states, last_state, use_cache, attention_mask)
    update_layer_cache(self, past_key_values, recurrent_state=state, conv_state=conv_state,
                       offset=hidden_states.shape[1])
    return output, None, past_key_values


# (module, class, method, CPU implementation): methods that refuse CPU tensors before any kernel.
_METHODS = [
    ('fla.modules.fused_cross_entropy.ops', 'FusedCrossEntropyLoss', 'forward', _fused_cross_entropy_forward),
    ('fla.layers.log_linear_mamba2', 'LogLinearMamba2', 'forward', _log_linear_mamba2_forward),
]


def _switch(original: Callable, cpu_impl: Callable) -> Callable:
    @functools.wraps(original)
    def routed(*args, **kwargs):
        if on_cpu(args, kwargs):
            return cpu_impl(*args, **kwargs)
        return original(*args, **kwargs)
    routed.__fla_cpu_original__ = original
    return routed


def _method_switch(original: Callable, cpu_impl: Callable) -> Callable:
    @functools.wraps(original)
    def routed(self, *args, **kwargs):
        if on_cpu(args, kwargs):
            return cpu_impl(self, *args, **kwargs)
        return original(self, *args, **kwargs)
    routed.__fla_cpu_original__ = original
    return routed


def _fla_modules():
    """fla's own loaded modules: the only namespaces the CPU patch rebinds names in (a user's module
    that imported an fla function keeps its own binding)."""
    return [(name, module) for name, module in list(sys.modules.items())
            if (name == 'fla' or name.startswith('fla.')) and isinstance(getattr(module, '__dict__', None), dict)]


def _rebind_in_fla(old: Any, new: Any) -> list[tuple[dict, str]]:
    """Point every attribute of fla's loaded modules that is `old` at `new`; returns (namespace, name) pairs."""
    bound = []
    for _, module in _fla_modules():
        namespace = module.__dict__
        for name, value in list(namespace.items()):
            if value is old:
                namespace[name] = new
                bound.append((namespace, name))
    return bound


@dataclass
class _Record:
    backends: list[tuple[Any, str, Any]] = field(default_factory=list)   # (registry, type, previous)
    # (original, switch, the fla namespaces and names it was bound to)
    functions: list[tuple[Callable, Callable, list]] = field(default_factory=list)
    methods: list[tuple[type, str, Any]] = field(default_factory=list)   # (class, name, previous)


_ACTIVE: _Record | None = None


def is_cpu_patched() -> bool:
    return _ACTIVE is not None


def _register(record: _Record, registry, backend: BaseBackend) -> None:
    record.backends.append((registry, backend.backend_type, registry._backends.get(backend.backend_type, _MISSING)))
    registry.register(backend)


def _switch_function(record: _Record, module_name: str, attr: str, cpu_impl: Callable) -> None:
    original = getattr(importlib.import_module(module_name), attr)
    routed = _switch(original, cpu_impl)
    record.functions.append((original, routed, _rebind_in_fla(original, routed)))


def patch_cpu() -> None:
    """Give fla's Triton-only modules a PyTorch path for CPU tensors. Idempotent."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    # import everything first so that the names bound by `from ... import` are there to rebind.
    for module_name in {m for m, *_ in (*_DISPATCHED, *_SWITCHED, *_METHODS)} | {'fla.layers', 'fla.models'}:
        importlib.import_module(module_name)
    record = _Record()
    try:
        for module_name, attr, cpu_impl in _DISPATCHED:
            if fla_backends._DISPATCH_DISABLED:
                _switch_function(record, module_name, attr, cpu_impl)
                continue
            entry = getattr(importlib.import_module(module_name), attr)
            backend = CPUBackend()
            backend.implementation = cpu_impl
            backend.verifier = _cpu_verifier
            _register(record, fla_backends._function_registries[inspect.unwrap(entry)], backend)
        for operation, (adapter, fallback) in _OPERATIONS.items():
            if fla_backends._DISPATCH_DISABLED:
                for module_name, attr, cpu_impl in fallback:
                    _switch_function(record, module_name, attr, cpu_impl)
                continue
            _register(record, fla_backends._load_operation_registry(operation), adapter())
        for module_name, attr, cpu_impl in _SWITCHED:
            _switch_function(record, module_name, attr, cpu_impl)
        for module_name, class_name, attr, cpu_impl in _METHODS:
            cls = getattr(importlib.import_module(module_name), class_name)
            record.methods.append((cls, attr, cls.__dict__.get(attr, _MISSING)))
            setattr(cls, attr, _method_switch(getattr(cls, attr), cpu_impl))
    except BaseException:
        _undo(record)
        raise
    _ACTIVE = record


def _undo(record: _Record) -> None:
    for cls, attr, previous in reversed(record.methods):
        if previous is _MISSING:
            delattr(cls, attr)
        else:
            setattr(cls, attr, previous)
    for original, routed, bound in reversed(record.functions):
        for namespace, name in bound:
            namespace[name] = original
        # fla modules imported while patched may hold the switch too
        _rebind_in_fla(routed, original)
    for registry, backend_type, previous in reversed(record.backends):
        if previous is _MISSING:
            registry._backends.pop(backend_type, None)
        else:
            registry._backends[backend_type] = previous


def unpatch_cpu() -> None:
    """Undo patch_cpu(): restore every original function, method and backend registry. Idempotent."""
    global _ACTIVE
    if _ACTIVE is None:
        return
    record, _ACTIVE = _ACTIVE, None
    _undo(record)
