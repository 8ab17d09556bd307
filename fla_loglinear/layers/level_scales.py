"""The lambda (level scale) projection shared by both log-linear layers, and what the layers add to fla's."""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fla_loglinear.ops.checks import updatable_in_place

__all__ = [
    "LevelScaleProjection",
    "LogLinearMixin",
    "check_log_linear_options",
    "DEFAULT_NUM_LEVELS",
    "DEFAULT_LAMBDA_RANK",
    "LAMBDA_INITS",
    "LAMBDA_FORMS",
    "DEFAULT_LAMBDA_FORM",
    "lambda_form_for",
]

# 21 levels cover 2 ** 20 tokens exactly; longer sequences share the last lambda (levels.clamp_level).
DEFAULT_NUM_LEVELS = 21
DEFAULT_LAMBDA_RANK = 32
LAMBDA_INITS = ("identity", "random")
# "paper": Guo et al.'s full-rank map; "lowrank": rank-lambda_rank bottleneck with a per-level bias
LAMBDA_FORMS = ("paper", "lowrank")
# The default since 2026-12-07: on the demo's task (CPU, seed 0, AdamW at lr 5e-3) the low-rank form
# trained the Gated DeltaNet twin to 38.6% recall where the paper form reached 99.5% and the parent 98.8%;
# the same low-rank model with the lambda projection at a tenth of the lr reached 99.2%, so the
# bottleneck's effective step size, not log-linear attention, was what failed (docs/benchmarks.md#mqar).
DEFAULT_LAMBDA_FORM = "paper"


def lambda_form_for(lambda_form: str | None, lambda_rank_given: bool) -> str:
    """The form meant by an option left out: ``lowrank`` where a rank was given (the only form a rank
    applies to, and what every checkpoint saved before the form option existed holds), else the default."""
    if lambda_form is not None:
        return lambda_form
    return "lowrank" if lambda_rank_given else DEFAULT_LAMBDA_FORM


def check_log_linear_options(num_levels: int, lambda_rank: int, lambda_init: str,
                             lambda_form: str = DEFAULT_LAMBDA_FORM) -> None:
    """Raises a ValueError naming the option when one of the log-linear options is not usable."""
    for name, value in (("num_levels", num_levels), ("lambda_rank", lambda_rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"log-linear option {name} must be an integer >= 1, got {value!r}")
    if lambda_init not in LAMBDA_INITS:
        raise ValueError(f"log-linear option lambda_init must be one of {LAMBDA_INITS}, got {lambda_init!r}")
    if lambda_form not in LAMBDA_FORMS:
        raise ValueError(f"log-linear option lambda_form must be one of {LAMBDA_FORMS}, got {lambda_form!r}")


@functools.lru_cache(maxsize=None)
def _softplus_zero(device: torch.device) -> torch.Tensor:
    # softplus(0) computed by this device's own kernel, so softplus(z) / it is exactly 1 at z == 0;
    # kept per device so each forward does not launch a fill and a softplus for one scalar
    return F.softplus(torch.zeros((), device=device))


class LevelScaleProjection(nn.Module):
    r"""Per-token, per-head, per-level lambdas from the hidden states, in one of two forms.

    ``lambda_form="paper"`` (the default; Guo et al.'s parameterisation):
    ``lambda[..., h, l] = softplus(level_scale[h, l] * (weight @ x)[..., h, l]) / softplus(0)``
    with ``weight`` a full-rank ``[heads * levels, hidden_size]`` map, no bias (``lambda_rank`` is
    unused).  ``identity`` sets ``weight = 0``; ``random`` draws it with std ``hidden_size ** -0.5``.

    ``lambda_form="lowrank"``:
    ``lambda[..., h, l] = softplus(level_scale[h, l] * d[..., h, l] + level_bias[h, l]) / softplus(0)``
    with ``d = weight_out @ (weight_in @ x)`` a rank-``lambda_rank`` projection.  ``identity`` sets
    ``weight_out = 0`` (``weight_in`` stays random so that ``weight_out`` gets a gradient at once);
    ``random`` also draws ``weight_out``.  Under Adam one step can move each ``d`` by up to
    ``lr * lambda_rank * |weight_in @ x|``, which is why this form trains worse at learning rates
    the rest of the model takes (see ``DEFAULT_LAMBDA_FORM``).

    Dividing by ``softplus(0)`` (which the paper does not) makes the ``identity`` init give
    lambda = 1 exactly in any dtype, so the layer reproduces its linear parent bit for bit; in the
    paper form this only rescales lambdas by the constant ``1 / log 2``, which the op's memory
    absorbs.  ``level_scale`` starts at 1; it and ``level_bias`` are marked ``_no_weight_decay``.

    Not an ``nn.Linear``: fla's ``_init_weights`` re-draws every ``nn.Linear`` but calls
    ``reset_parameters()`` on other modules, which keeps the intended init (and re-marks the
    no-decay flags, which ``to_empty()`` drops with the old parameter objects).

    Args:
        hidden_size: input features.
        num_heads: heads lambdas are given for (value heads of the op).
        num_levels: ``L``, lambdas per head.
        lambda_rank: bottleneck width of the ``lowrank`` projection.
        lambda_init: ``"identity"`` or ``"random"``.
        lambda_form: ``"paper"`` or ``"lowrank"``.

    Input ``[..., hidden_size]``; output ``[..., num_heads, num_levels]`` float32.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_levels: int,
        lambda_rank: int,
        lambda_init: str = "identity",
        lambda_form: str = DEFAULT_LAMBDA_FORM,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_log_linear_options(num_levels, lambda_rank, lambda_init, lambda_form)
        factory = {"device": device, "dtype": dtype}
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.lambda_rank = lambda_rank
        self.lambda_init = lambda_init
        self.lambda_form = lambda_form
        if lambda_form == "paper":
            self.weight = nn.Parameter(torch.empty(num_heads * num_levels, hidden_size, **factory))
        else:
            self.weight_in = nn.Parameter(torch.empty(lambda_rank, hidden_size, **factory))
            self.weight_out = nn.Parameter(torch.empty(num_heads * num_levels, lambda_rank, **factory))
            self.level_bias = nn.Parameter(torch.empty(num_heads, num_levels, **factory))
        self.level_scale = nn.Parameter(torch.empty(num_heads, num_levels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.init is looked up at call time: transformers swaps in versions that skip loaded weights.
        random = self.lambda_init == "random"
        if self.lambda_form == "paper":
            if random:
                nn.init.normal_(self.weight, mean=0.0, std=self.hidden_size ** -0.5)
            else:
                nn.init.zeros_(self.weight)
        else:
            nn.init.normal_(self.weight_in, mean=0.0, std=self.hidden_size ** -0.5)
            if random:
                nn.init.normal_(self.weight_out, mean=0.0, std=self.lambda_rank ** -0.5)
            else:
                nn.init.zeros_(self.weight_out)
            nn.init.zeros_(self.level_bias)
            self.level_bias._no_weight_decay = True
        nn.init.ones_(self.level_scale)
        self.level_scale._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lambda_form == "paper":
            d = F.linear(x, self.weight).unflatten(-1, (self.num_heads, self.num_levels))
            z = d.float() * self.level_scale.float()
        else:
            d = F.linear(F.linear(x, self.weight_in), self.weight_out).unflatten(-1, (self.num_heads, self.num_levels))
            z = torch.addcmul(self.level_bias.float(), self.level_scale.float(), d.float())
        return F.softplus(z) / _softplus_zero(z.device)

    def extra_repr(self) -> str:
        rank = f"lambda_rank={self.lambda_rank}, " if self.lambda_form == "lowrank" else ""
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
                f"{rank}lambda_init={self.lambda_init!r}, lambda_form={self.lambda_form!r}")


class LogLinearMixin:
    """What a log-linear layer adds to its fla parent: ``level_proj``, conversion from a stock layer and
    the forward's input rule and choice of op, which both layers share.

    A subclass sets ``_stock_class`` (the fla layer it extends) and ``_lambda_heads`` (the attribute
    holding the number of heads lambdas are given for).
    """

    _stock_class: type
    _lambda_heads: str

    def __init__(
        self,
        *args,
        num_levels: int = DEFAULT_NUM_LEVELS,
        lambda_rank: int = DEFAULT_LAMBDA_RANK,
        lambda_init: str = "identity",
        lambda_form: str = DEFAULT_LAMBDA_FORM,
        **kwargs,
    ):
        # the fla parent builds its layer first: the projection sizes follow its heads
        super().__init__(*args, **kwargs)
        self._init_log_linear(num_levels, lambda_rank, lambda_init, lambda_form)

    def _init_log_linear(self, num_levels: int, lambda_rank: int, lambda_init: str, lambda_form: str) -> None:
        ref = next(self.parameters())
        self.num_levels = num_levels
        self.level_proj = LevelScaleProjection(
            self.hidden_size, getattr(self, self._lambda_heads), num_levels, lambda_rank, lambda_init, lambda_form,
            device=ref.device, dtype=ref.dtype,
        )

    @staticmethod
    def _check_attention_mask(attention_mask: torch.Tensor | None) -> None:
        # the layers unpad by it, which takes a per-token padding mask
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(
                "attention_mask must be a [batch_size, seq_len] 0/1 padding mask (0 = padding), "
                f"got shape {tuple(attention_mask.shape)}"
            )

    @staticmethod
    def _pick_op(decoding: bool, chunk_op, recurrent_op, initial_state) -> tuple[Callable, dict]:
        """The op of a call and the options only it takes: the recurrent op for decoding steps, the
        chunked op otherwise."""
        if not decoding:
            return chunk_op, {}
        # the cache's state is ours alone: decode into it (see inplace_final_state)
        return recurrent_op, {"inplace_final_state": updatable_in_place(initial_state)}

    @classmethod
    def from_stock(
        cls,
        layer: nn.Module,
        num_levels: int = DEFAULT_NUM_LEVELS,
        lambda_rank: int = DEFAULT_LAMBDA_RANK,
        lambda_init: str = "identity",
        lambda_form: str = DEFAULT_LAMBDA_FORM,
    ):
        """Turns a stock fla layer into this log-linear layer in place and returns it.

        Its parameters stay the same objects (optimizer state and tying survive); ``level_proj`` is
        added on the layer's device and dtype.  With ``lambda_init="identity"`` the outputs are the
        stock layer's.
        """
        if type(layer) is not cls._stock_class:
            raise TypeError(
                f"{cls.__name__}.from_stock needs a {cls._stock_class.__module__}.{cls._stock_class.__name__}, "
                f"got {type(layer).__module__}.{type(layer).__name__}"
            )
        check_log_linear_options(num_levels, lambda_rank, lambda_init, lambda_form)
        # same attributes plus level_proj: swapping the class keeps every existing parameter object.
        layer.__class__ = cls
        layer._init_log_linear(num_levels, lambda_rank, lambda_init, lambda_form)
        return layer
