"""Option handling and input preprocessing of the log-linear gated delta rule ops.

fla's GatedDeltaNet layer (0.6.0) hands its kernel raw projections and lets the
kernel normalise q/k, squash beta and build the log gate.  Our kernels take the
already-preprocessed tensors, so these steps run here as differentiable PyTorch
ops (autograd gives the gradients of q, k, beta, g, A_log and dt_bias); on CUDA the q/k
normalisation is fla's own ``l2norm``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from fla.modules.l2norm import l2norm
from fla.ops.gated_delta_rule.gate import naive_gdn_gate

from fla_loglinear.ops.log_linear_gated_delta_rule.layout import CHUNK_SIZE

__all__ = ["GatedDeltaRuleOptions", "parse_options", "preprocess_inputs", "L2NORM_EPS"]

# fla's l2norm_fwd default, so q/k normalise identically to fla's kernel option.
L2NORM_EPS = 1e-6

_KNOWN = {
    "use_beta_sigmoid_in_kernel",
    "allow_neg_eigval",
    "use_gate_in_kernel",
    "A_log",
    "dt_bias",
    "state_v_first",
    "chunk_size",
    "cu_seqlens_cpu",
    "_force_triton",
    "_plan",
}


@dataclass
class GatedDeltaRuleOptions:
    use_qk_l2norm_in_kernel: bool = False
    use_beta_sigmoid_in_kernel: bool = False
    allow_neg_eigval: bool = False
    use_gate_in_kernel: bool = False
    A_log: torch.Tensor | None = None
    dt_bias: torch.Tensor | None = None
    state_v_first: bool = False
    force_triton: bool = False
    plan: object = None  # the chunked op's GDNLaunchPlan (None: chosen from the shapes)


def parse_options(op: str, use_qk_l2norm_in_kernel: bool, kwargs: dict) -> GatedDeltaRuleOptions:
    """Validates the fla-style keyword options; unknown names or inconsistent combinations raise."""
    unknown = sorted(set(kwargs) - _KNOWN)
    if unknown:
        public = sorted(_KNOWN - {"_force_triton", "_plan"})
        raise TypeError(f"{op} got unsupported option(s) {unknown}; supported: {public}")
    chunk_size = kwargs.get("chunk_size", CHUNK_SIZE)
    if chunk_size != CHUNK_SIZE:
        raise ValueError(f"{op}: chunk_size must be {CHUNK_SIZE} (chunks are aligned to absolute positions), "
                         f"got {chunk_size}")
    opts = GatedDeltaRuleOptions(
        use_qk_l2norm_in_kernel=bool(use_qk_l2norm_in_kernel),
        use_beta_sigmoid_in_kernel=bool(kwargs.get("use_beta_sigmoid_in_kernel", False)),
        allow_neg_eigval=bool(kwargs.get("allow_neg_eigval", False)),
        use_gate_in_kernel=bool(kwargs.get("use_gate_in_kernel", False)),
        A_log=kwargs.get("A_log"),
        dt_bias=kwargs.get("dt_bias"),
        state_v_first=bool(kwargs.get("state_v_first", False)),
        force_triton=bool(kwargs.get("_force_triton", False)),
        plan=kwargs.get("_plan"),
    )
    if opts.allow_neg_eigval and not opts.use_beta_sigmoid_in_kernel:
        raise ValueError(f"{op}: allow_neg_eigval=True requires use_beta_sigmoid_in_kernel=True (as in fla)")
    if opts.use_gate_in_kernel and opts.A_log is None:
        raise ValueError(f"{op}: use_gate_in_kernel=True requires A_log [HV]")
    if not opts.use_gate_in_kernel and (opts.A_log is not None or opts.dt_bias is not None):
        raise ValueError(f"{op}: A_log / dt_bias are only used with use_gate_in_kernel=True")
    return opts


def _check_head_param(name: str, x: torch.Tensor, HV: int, device: torch.device) -> None:
    if not isinstance(x, torch.Tensor) or x.numel() != HV:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must hold one value per value head [HV] = [{HV}], got {shape}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the inputs are on {device}")


def preprocess_inputs(q, k, g, beta, opts: GatedDeltaRuleOptions):
    """Applies the in-kernel options of fla's chunk_gated_delta_rule in PyTorch.

    Returns ``(q, k, g, beta)`` as the plain gated delta rule expects them:
    unit-norm q/k (when asked), ``beta`` in (0, 1) or (0, 2), ``g`` the per-token log decay
    ``-exp(A_log) * softplus(g + dt_bias)`` (float32) when the gate is built here.
    """
    HV = g.shape[-1]
    if opts.use_qk_l2norm_in_kernel:
        q = _l2norm(q)
        k = _l2norm(k)
    if opts.use_beta_sigmoid_in_kernel:
        # not fla.ops.common.gate.fused_beta_sigmoid: a Triton kernel (no CPU path, its own rounding)
        beta = torch.sigmoid(beta.float()) * (2.0 if opts.allow_neg_eigval else 1.0)
    if opts.use_gate_in_kernel:
        _check_head_param("A_log", opts.A_log, HV, g.device)
        dt_bias = None
        if opts.dt_bias is not None:
            _check_head_param("dt_bias", opts.dt_bias, HV, g.device)
            dt_bias = opts.dt_bias.reshape(HV)
        # fla's PyTorch gate (the same ops as its fused kernel's reference), differentiable
        g = naive_gdn_gate(g, opts.A_log.reshape(HV), dt_bias)
    return q, k, g, beta


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:
        # fla's fused kernel and backward, the normalisation its own op applies (in PyTorch it was
        # a large part of the forward)
        return l2norm(x, eps=L2NORM_EPS)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + L2NORM_EPS)).to(x.dtype)
