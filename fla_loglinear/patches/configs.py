"""Config side of the patch: the ``log_linear`` fields on fla's configs and the checkpoint model types.

A saved log-linear config must never load as a stock model with its lambda weights dropped:
- it carries its own ``model_type`` (``fla_loglinear_<fla type>``), which only a patched session
  knows, so ``AutoConfig`` / ``AutoModel*`` refuse it without this package;
- one field that fla's own config ``__init__`` validates (``LOCKED_FIELDS``) is saved wrapped in a
  dict that names this package, so fla's stock classes loaded directly
  (``GatedDeltaNetForCausalLM.from_pretrained``) raise too; the patched ``__init__`` unwraps it.
"""
from __future__ import annotations

import functools

from fla.models import GatedDeltaNetConfig, Mamba2Config

from fla_loglinear.layers.level_scales import (
    DEFAULT_LAMBDA_FORM,
    DEFAULT_LAMBDA_RANK,
    DEFAULT_NUM_LEVELS,
    check_log_linear_options,
    lambda_form_for,
)

__all__ = [
    "LOG_LINEAR_FIELDS",
    "FIELD_OPTIONS",
    "GatedDeltaNetLogLinearConfig",
    "Mamba2LogLinearConfig",
    "LOG_LINEAR_CONFIGS",
    "LOCKED_FIELDS",
    "log_linear_options",
    "wrap_config_init",
    "wrap_config_to_dict",
]

# config field -> default; read with log_linear_options(config)
LOG_LINEAR_FIELDS = {
    "log_linear": False,
    "log_linear_levels": DEFAULT_NUM_LEVELS,
    "log_linear_lambda_rank": DEFAULT_LAMBDA_RANK,
    "log_linear_lambda_init": "identity",
    # left out: lambda_form_for() (lowrank where a rank is given, as in every checkpoint from before the field)
    "log_linear_lambda_form": DEFAULT_LAMBDA_FORM,
}

# config field -> the layer option it sets
FIELD_OPTIONS = {
    "log_linear_levels": "num_levels",
    "log_linear_lambda_rank": "lambda_rank",
    "log_linear_lambda_init": "lambda_init",
    "log_linear_lambda_form": "lambda_form",
}


class GatedDeltaNetLogLinearConfig(GatedDeltaNetConfig):
    """What a saved log-linear Gated DeltaNet config loads as (``log_linear`` defaults to True)."""

    model_type = "fla_loglinear_gated_deltanet"

    def __init__(self, log_linear: bool = True, **kwargs):
        super().__init__(log_linear=log_linear, **kwargs)


class Mamba2LogLinearConfig(Mamba2Config):
    """What a saved log-linear Mamba-2 config loads as (``log_linear`` defaults to True)."""

    model_type = "fla_loglinear_mamba2"

    def __init__(self, log_linear: bool = True, **kwargs):
        super().__init__(log_linear=log_linear, **kwargs)


# stock config class -> the log-linear config class its checkpoints load as
LOG_LINEAR_CONFIGS = {GatedDeltaNetConfig: GatedDeltaNetLogLinearConfig, Mamba2Config: Mamba2LogLinearConfig}
_SUPPORTED = {cls for pair in LOG_LINEAR_CONFIGS.items() for cls in pair}
# stock config class -> a field whose check in fla's __init__ rejects the wrapped (dict) value:
# output_gate_activation must be one of three strings, A_init_range a pair (the dict has 3 keys)
LOCKED_FIELDS = {GatedDeltaNetConfig: "output_gate_activation", Mamba2Config: "A_init_range"}
LOCK_NOTE = "a log-linear checkpoint: `import fla_loglinear; fla_loglinear.patch()` before loading it"


def lock_field(value) -> dict:
    return {"fla_loglinear": LOCK_NOTE, "patch": "fla_loglinear.patch()", "value": value}


def unlock_field(value):
    if isinstance(value, dict) and value.get("fla_loglinear") == LOCK_NOTE:
        return value["value"]
    return value


def log_linear_options(config) -> dict | None:
    """The layer options of a log-linear config (``num_levels``, ``lambda_rank``, ``lambda_init``,
    ``lambda_form``), else None.  Configs saved before ``log_linear_lambda_form`` existed carry a rank and
    are ``lowrank`` (the config's ``__init__`` decides that, with :func:`lambda_form_for`)."""
    if not getattr(config, "log_linear", False):
        return None
    opts = {option: getattr(config, field, LOG_LINEAR_FIELDS[field]) for field, option in FIELD_OPTIONS.items()}
    check_log_linear_options(**opts)
    return opts


def _check_fields(config, fields: dict) -> None:
    if not isinstance(fields["log_linear"], bool):
        raise ValueError(f"config option log_linear must be a bool, got {fields['log_linear']!r}")
    if fields["log_linear"] and type(config) not in _SUPPORTED:
        raise ValueError(
            f"config option log_linear=True is not supported for {type(config).__module__}.{type(config).__name__} "
            f"(model_type {type(config).model_type!r}); supported: {sorted(c.__name__ for c in _SUPPORTED)}"
        )
    defaults = {option: LOG_LINEAR_FIELDS[field] for field, option in FIELD_OPTIONS.items()}
    # one field at a time (the others at their defaults), so the error names the culprit
    for field, option in FIELD_OPTIONS.items():
        try:
            check_log_linear_options(**{**defaults, option: fields[field]})
        except ValueError as error:
            raise ValueError(f"config field {field}: {error}") from None


def wrap_config_init(original):
    """Config ``__init__`` that also takes (and validates) the log-linear fields, with their defaults."""

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        form = lambda_form_for(kwargs.pop("log_linear_lambda_form", None), "log_linear_lambda_rank" in kwargs)
        fields = {name: kwargs.pop(name, default) for name, default in LOG_LINEAR_FIELDS.items()}
        fields["log_linear_lambda_form"] = form
        # a saved log-linear config carries our model_type; the flag already says what it means
        if kwargs.get("model_type") in {c.model_type for c in LOG_LINEAR_CONFIGS.values()}:
            kwargs.pop("model_type")
        for name in set(LOCKED_FIELDS.values()) & kwargs.keys():
            kwargs[name] = unlock_field(kwargs[name])
        _check_fields(self, fields)
        original(self, *args, **kwargs)
        for name, value in fields.items():
            setattr(self, name, value)

    __init__.__fla_loglinear_original__ = original
    return __init__


def wrap_config_to_dict(original, stock_class):
    """``to_dict`` of log-linear configs (what save_pretrained stores): our model_type and the locked field."""
    model_type = LOG_LINEAR_CONFIGS[stock_class].model_type
    locked = LOCKED_FIELDS[stock_class]

    @functools.wraps(original)
    def to_dict(self):
        out = original(self)
        if out.get("log_linear"):
            out["model_type"] = model_type
            if locked in out:
                out[locked] = lock_field(out[locked])
        return out

    to_dict.__fla_loglinear_original__ = original
    return to_dict
