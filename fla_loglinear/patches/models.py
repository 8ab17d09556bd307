"""``patch()`` / ``unpatch()`` / ``convert()``: fla's Mamba-2 and Gated DeltaNet models in log-linear mode.

Where fla builds a mixer (``Mamba2Block.mixer``, ``GatedDeltaNetBlock.attn``) the patched block
turns it into the log-linear layer when ``config.log_linear`` is set; fla's classes, parameter
names and ``Cache`` are kept, so ``from_config`` / ``from_pretrained`` / the Auto classes /
``save_pretrained`` / ``generate()`` work unchanged.  fla 0.6's backend registry dispatches only
kernel internals (not mixers, nor ``chunk_log_linear_attn``), so every change here is a class or
module attribute (or an Auto-mapping entry), recorded and put back by ``unpatch()``.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["patch", "unpatch", "is_patched", "convert"]

_MISSING = object()


@dataclass(frozen=True)
class _Family:
    """One fla model family: where its blocks keep the mixer and which classes make it up."""

    module: str           # fla modeling module
    block: str            # block class building the mixer
    mixer_attr: str       # block attribute holding the mixer
    layer: str            # our layer class in fla_loglinear.layers
    causal_lm: str
    base_model: str
    config: str           # stock config class in fla.models


_FAMILIES = (
    _Family("fla.models.gated_deltanet.modeling_gated_deltanet", "GatedDeltaNetBlock", "attn",
            "LogLinearGatedDeltaNet", "GatedDeltaNetForCausalLM", "GatedDeltaNetModel", "GatedDeltaNetConfig"),
    _Family("fla.models.mamba2.modeling_mamba2", "Mamba2Block", "mixer",
            "LogLinearMamba2", "Mamba2ForCausalLM", "Mamba2Model", "Mamba2Config"),
)


def _resolve(family: _Family) -> dict[str, Any]:
    import fla.models
    import fla_loglinear.layers
    modeling = importlib.import_module(family.module)
    return {
        "block": getattr(modeling, family.block),
        "layer": getattr(fla_loglinear.layers, family.layer),
        "causal_lm": getattr(modeling, family.causal_lm),
        "base_model": getattr(modeling, family.base_model),
        "config": getattr(fla.models, family.config),
    }


class _Record:
    """Undo log of the patch: every change registers how to put the previous value back."""

    def __init__(self):
        self._undo: list[Callable[[], None]] = []

    def set_attr(self, owner: Any, name: str, value: Any) -> None:
        # a class attribute may be inherited: only what the owner itself held is restored
        previous = owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name)

        def undo():
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)

        setattr(owner, name, value)
        self._undo.append(undo)

    def put(self, mapping: dict, key: Any, value: Any) -> None:
        previous = mapping.get(key, _MISSING)

        def undo():
            if previous is _MISSING:
                mapping.pop(key, None)
            else:
                mapping[key] = previous

        mapping[key] = value
        self._undo.append(undo)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def _wrap_block_init(original, mixer_attr: str, layer_cls):
    from fla_loglinear.patches.configs import log_linear_options

    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        opts = log_linear_options(config)
        mixer = getattr(self, mixer_attr)
        # hybrid configs put softmax attention in some blocks: only the fla mixer becomes log-linear
        if opts is not None and type(mixer) is layer_cls._stock_class:
            layer_cls.from_stock(mixer, **opts)

    __init__.__fla_loglinear_original__ = original
    return __init__


def _accept_cache_kwarg(original):
    """transformers 5.24's generate() passes the cache as ``cache=``, fla 0.6 reads ``past_key_values``:
    without this a log-linear model would silently decode every step from an empty state."""

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        if "cache" in kwargs and getattr(self.config, "log_linear", False):
            cache = kwargs.pop("cache")
            past = kwargs.get("past_key_values")
            if cache is not None and past is not None and past is not cache:
                raise ValueError("got both cache= and past_key_values= (different objects); pass one of them")
            if past is None:
                kwargs["past_key_values"] = cache
        return original(self, *args, **kwargs)

    forward.__fla_loglinear_original__ = original
    return forward


def _apply(record: _Record) -> None:
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from fla_loglinear.patches import fla_log_linear_mamba2
    from fla_loglinear.patches.configs import LOG_LINEAR_CONFIGS, wrap_config_init, wrap_config_to_dict

    for family in _FAMILIES:
        cls = _resolve(family)
        stock_config, ll_config = cls["config"], LOG_LINEAR_CONFIGS[cls["config"]]
        record.set_attr(stock_config, "__init__", wrap_config_init(stock_config.__init__))
        record.set_attr(stock_config, "to_dict", wrap_config_to_dict(stock_config.to_dict, stock_config))
        block_init = _wrap_block_init(cls["block"].__init__, family.mixer_attr, cls["layer"])
        record.set_attr(cls["block"], "__init__", block_init)
        for model_cls in (cls["causal_lm"], cls["base_model"]):
            record.set_attr(model_cls, "forward", _accept_cache_kwarg(model_cls.forward))
        # what AutoConfig.register / AutoModel*.register do, minus the latter's insistence that the
        # model's config_class be this very class (it is fla's stock config)
        record.put(CONFIG_MAPPING._extra_content, ll_config.model_type, ll_config)
        record.put(AutoModelForCausalLM._model_mapping._extra_content, ll_config, cls["causal_lm"])
        record.put(AutoModel._model_mapping._extra_content, ll_config, cls["base_model"])

    module_name, attr = fla_log_linear_mamba2.TARGET
    record.set_attr(importlib.import_module(module_name), attr, fla_log_linear_mamba2.fla_chunk_log_linear_attn)


_ACTIVE: _Record | None = None
_CPU_BY_US = False


def is_patched() -> bool:
    return _ACTIVE is not None


def patch(cpu: bool = True) -> None:
    """Make fla's Mamba-2 / Gated DeltaNet configs understand ``log_linear=True``. Idempotent.

    Config fields (defaults): ``log_linear`` (False), ``log_linear_levels`` (21),
    ``log_linear_lambda_rank`` (32), ``log_linear_lambda_init`` (``"identity"`` | ``"random"``),
    ``log_linear_lambda_form`` (``"paper"``, the default | ``"lowrank"``, what a given rank selects).
    Also routes fla's own ``LogLinearMamba2`` model to our scalar op, and (unless ``cpu=False``)
    gives fla's Triton-only modules a PyTorch path taken only for CPU tensors
    (``patches.cpu.patch_cpu``), so fla models run on a CPU; GPU paths are untouched.
    """
    global _ACTIVE, _CPU_BY_US
    if _ACTIVE is None:
        record = _Record()
        try:
            _apply(record)
        except BaseException:
            record.undo()
            raise
        _ACTIVE = record
    if cpu:
        from fla_loglinear.patches.cpu import is_cpu_patched, patch_cpu
        if not is_cpu_patched():
            patch_cpu()
            _CPU_BY_US = True


def unpatch() -> None:
    """Put back everything ``patch()`` changed (the CPU paths too, if patch turned them on). Idempotent.

    Models built while patched keep their log-linear layers but lose the ``cache=`` alias and the
    Auto-class registration; save them while patched (unpatched, their config is written with the
    stock model_type).
    """
    global _ACTIVE, _CPU_BY_US
    if _CPU_BY_US:
        from fla_loglinear.patches.cpu import unpatch_cpu
        unpatch_cpu()
        _CPU_BY_US = False
    if _ACTIVE is not None:
        record, _ACTIVE = _ACTIVE, None
        record.undo()


def convert(
    model,
    num_levels: int | None = None,
    lambda_rank: int | None = None,
    lambda_init: str = "identity",
    lambda_form: str | None = None,
):
    """Turn a built or loaded stock fla Mamba-2 / Gated DeltaNet model into log-linear mode, in place.

    Every fla mixer (softmax-attention layers of a hybrid GDN stay as they are) gains a lambda
    projection; the config gets ``log_linear=True`` and the options, so ``save_pretrained`` writes a
    log-linear checkpoint.  With ``lambda_init="identity"`` the logits are unchanged until trained.
    Calls :func:`patch` (needed for the ``cache=`` alias and for loading the result back).

    Args:
        model: ``Mamba2ForCausalLM`` / ``Mamba2Model`` / ``GatedDeltaNetForCausalLM`` / ``GatedDeltaNetModel``.
        num_levels: lambdas per head (default 21: every level of 2 ** 20 tokens).
        lambda_rank: bottleneck width of the lambda projection (default 32).
        lambda_init: ``"identity"`` or ``"random"``.
        lambda_form: ``"paper"`` (Guo et al.'s full-rank map, the default) or ``"lowrank"`` (bottleneck +
            bias; what a given ``lambda_rank`` selects when the form is left out);
            see :class:`~fla_loglinear.layers.LevelScaleProjection`.

    Returns:
        ``model``.
    """
    # imported here: `import fla_loglinear` should not pull in fla's layers
    from fla_loglinear.layers.level_scales import (
        DEFAULT_LAMBDA_RANK,
        DEFAULT_NUM_LEVELS,
        check_log_linear_options,
        lambda_form_for,
    )

    lambda_form = lambda_form_for(lambda_form, lambda_rank is not None)
    num_levels = DEFAULT_NUM_LEVELS if num_levels is None else num_levels
    lambda_rank = DEFAULT_LAMBDA_RANK if lambda_rank is None else lambda_rank
    check_log_linear_options(num_levels, lambda_rank, lambda_init, lambda_form)
    patch()
    families = [(family, _resolve(family)) for family in _FAMILIES]
    match = [(f, c) for f, c in families if type(model) in (c["causal_lm"], c["base_model"])]
    if not match:
        supported = sorted(c[k].__name__ for _, c in families for k in ("causal_lm", "base_model"))
        raise TypeError(f"convert() does not handle {type(model).__module__}.{type(model).__name__}; "
                        f"supported: {supported}")
    family, cls = match[0]
    if getattr(model.config, "log_linear", False):
        raise ValueError(f"{type(model).__name__} is already in log-linear mode (config.log_linear=True)")
    for module in model.modules():
        if isinstance(module, cls["block"]):
            mixer = getattr(module, family.mixer_attr)
            if type(mixer) is cls["layer"]._stock_class:
                cls["layer"].from_stock(mixer, num_levels=num_levels, lambda_rank=lambda_rank,
                                        lambda_init=lambda_init, lambda_form=lambda_form)
    model.config.log_linear = True
    model.config.log_linear_levels = num_levels
    model.config.log_linear_lambda_rank = lambda_rank
    model.config.log_linear_lambda_init = lambda_init
    model.config.log_linear_lambda_form = lambda_form
    return model
