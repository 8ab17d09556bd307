"""PyTorch implementations of fla's Triton-only kernel entry points, for CPU tensors.

Each function here has the signature and the return convention of the fla function it stands in
for (named in its docstring), so that fla's autograd Functions and layers work unchanged when
`fla_loglinear.patches.cpu.patch_cpu()` routes CPU calls here. Arithmetic is done in float32 and
results are cast back to the dtypes fla's kernels would produce.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fla.ops.gated_delta_rule.gate import naive_gdn_gate
from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule


def _act(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation in ('swish', 'silu'):
        return F.silu(x)
    if activation == 'sigmoid':
        return torch.sigmoid(x)
    if activation is None:
        return x
    raise ValueError(f"unsupported activation {activation!r}")


def _act_grad(x: torch.Tensor, activation: str) -> torch.Tensor:
    s = torch.sigmoid(x)
    if activation in ('swish', 'silu'):
        return s * (1 + x * (1 - s))
    if activation == 'sigmoid':
        return s * (1 - s)
    raise ValueError(f"unsupported activation {activation!r}")


def _l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    # fla's l2norm puts eps inside the square root of the plain sum of squares (not the mean).
    xf = x.float()
    rstd = torch.rsqrt(xf.square().sum(-1) + eps)
    return xf * rstd[..., None], rstd


# ---------------------------------------------------------------------------------------------
# fla.modules.norm.layernorm: layer_norm_fwd / layer_norm_bwd (RMSNorm, LayerNorm, GroupNorm)
# ---------------------------------------------------------------------------------------------

def _norm_stats(x: torch.Tensor, eps: float, is_rms_norm: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    mean = None if is_rms_norm else x.mean(-1)
    xc = x if is_rms_norm else x - mean[..., None]
    rstd = torch.rsqrt(xc.square().mean(-1) + eps)
    return mean, rstd


def _normalized(x: torch.Tensor, mean: torch.Tensor | None, rstd: torch.Tensor) -> torch.Tensor:
    return (x if mean is None else x - mean[..., None]) * rstd[..., None]


def _grouped(p: torch.Tensor | None, T: int, G: int, D: int) -> torch.Tensor | None:
    # rows of x cycle through the G groups (row t uses group t % G), as in fla's grouped kernel.
    if p is None:
        return None
    return p.float().view(G, D).repeat(T // G, 1)


def _norm_input_grad(gy: torch.Tensor, x_hat: torch.Tensor, rstd: torch.Tensor, is_rms_norm: bool) -> torch.Tensor:
    # gradient of x_hat = (x - mean) * rstd (or x * rstd) w.r.t. x, given gy = dL/dx_hat
    proj = (gy * x_hat).mean(-1, keepdim=True)
    dx = gy - x_hat * proj
    if not is_rms_norm:
        dx = dx - gy.mean(-1, keepdim=True)
    return dx * rstd[..., None]


def layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    residual_dtype: torch.dtype | None = None,
    is_rms_norm: bool = False,
    num_groups: int = 1,
):
    """CPU stand-in for `fla.modules.norm.layernorm.layer_norm_fwd`; x, residual: [T, D]."""
    if residual is not None:
        residual_dtype = residual.dtype
    T, D = x.shape
    xf = x.float() if residual is None else x.float() + residual.float()
    res_out = None
    if residual is not None or (residual_dtype is not None and residual_dtype != x.dtype):
        res_out = xf.to(residual_dtype)
    mean, rstd = _norm_stats(xf, eps, is_rms_norm)
    y = _normalized(xf, mean, rstd)
    if weight is not None:
        y = y * _grouped(weight, T, num_groups, D)
    if bias is not None:
        y = y + _grouped(bias, T, num_groups, D)
    y = y.to(x.dtype if out_dtype is None else out_dtype)
    return y, mean, rstd, res_out if res_out is not None else x


def layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor | None = None,
    rstd: torch.Tensor | None = None,
    dres: torch.Tensor | None = None,
    has_residual: bool = False,
    is_rms_norm: bool = False,
    x_dtype: torch.dtype | None = None,
    recompute_output: bool = False,
    num_groups: int = 1,
):
    """CPU stand-in for `fla.modules.norm.layernorm.layer_norm_bwd`: (dx, dw, db, dres_in[, y])."""
    T, D, G = *x.shape, num_groups
    xf, dyf = x.float(), dy.float()
    x_hat = _normalized(xf, mean, rstd)
    w = _grouped(weight, T, G, D)
    gy = dyf * w if w is not None else dyf
    dx = _norm_input_grad(gy, x_hat, rstd, is_rms_norm)
    if dres is not None:
        dx = dx + dres.float()
    dw = (dyf * x_hat).view(-1, G, D).sum(0).reshape(-1).to(weight) if weight is not None else None
    db = dyf.view(-1, G, D).sum(0).reshape(-1).to(bias) if bias is not None else None
    dx = dx.to(x.dtype if x_dtype is None else x_dtype)
    dres_in = dx.to(x.dtype) if has_residual else None
    if not recompute_output:
        return dx, dw, db, dres_in
    y = x_hat * w if w is not None else x_hat
    if bias is not None:
        y = y + _grouped(bias, T, G, D)
    return dx, dw, db, dres_in, y.to(dy.dtype)


# ---------------------------------------------------------------------------------------------
# fla.modules.norm.fused_norm_gate: layer_norm_gated_fwd / layer_norm_gated_bwd (FusedRMSNormGated)
# ---------------------------------------------------------------------------------------------

def layer_norm_gated_fwd(
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "swish",
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    residual_dtype: torch.dtype | None = None,
    is_rms_norm: bool = False,
):
    """CPU stand-in for `fla.modules.norm.fused_norm_gate.layer_norm_gated_fwd`: norm(x) * act(g)."""
    y, mean, rstd, res_out = layer_norm_fwd(
        x=x, weight=weight, bias=bias, eps=eps, residual=residual, out_dtype=torch.float32,
        residual_dtype=residual_dtype, is_rms_norm=is_rms_norm,
    )
    y = (y * _act(g.float(), activation)).to(x.dtype if out_dtype is None else out_dtype)
    return y, mean, rstd, res_out


def layer_norm_gated_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    activation: str = "swish",
    eps: float = 1e-5,
    mean: torch.Tensor | None = None,
    rstd: torch.Tensor | None = None,
    dresidual: torch.Tensor | None = None,
    has_residual: bool = False,
    is_rms_norm: bool = False,
    x_dtype: torch.dtype | None = None,
    recompute_output: bool = False,
):
    """CPU stand-in for `fla.modules.norm.fused_norm_gate.layer_norm_gated_bwd`: (dx, dg, dw, db, dres_in[, y])."""
    xf, gf, dyf = x.float(), g.float(), dy.float()
    x_hat = _normalized(xf, mean, rstd)
    n = x_hat * weight.float() if weight is not None else x_hat
    if bias is not None:
        n = n + bias.float()
    dn = dyf * _act(gf, activation)
    dg = dyf * n * _act_grad(gf, activation)
    gy = dn * weight.float() if weight is not None else dn
    dx = _norm_input_grad(gy, x_hat, rstd, is_rms_norm)
    if dresidual is not None:
        dx = dx + dresidual.float()
    dw = (dn * x_hat).sum(0).to(weight.dtype) if weight is not None else None
    db = dn.sum(0).to(bias.dtype) if bias is not None else None
    out_dtype = x.dtype if x_dtype is None else x_dtype
    dx, dg = dx.to(out_dtype), dg.to(g.dtype if x_dtype is None else x_dtype)
    dres_in = dx.to(x.dtype) if has_residual else None
    if not recompute_output:
        return dx, dg, dw, db, dres_in
    return dx, dg, dw, db, dres_in, (n * _act(gf, activation)).to(dy.dtype)


# ---------------------------------------------------------------------------------------------
# fla.modules.norm.layernorm_gated: layer_norm_fwd / layer_norm_bwd (Mamba-2's RMSNormGated)
# ---------------------------------------------------------------------------------------------

def _group_gated_norm(x, weight, bias, eps, z, group_size, norm_before_gate, is_rms_norm):
    T, D = x.shape
    G = D // (D if group_size is None else group_size)
    xf = x.float()
    if z is not None and not norm_before_gate:
        xf = xf * F.silu(z.float())
    xg = xf.view(T, G, -1)
    mean, rstd = _norm_stats(xg, eps, is_rms_norm)
    y = _normalized(xg, mean, rstd).reshape(T, D) * weight.float()
    if bias is not None:
        y = y + bias.float()
    if z is not None and norm_before_gate:
        y = y * F.silu(z.float())
    # fla stores the statistics group-major: [G * T]
    return y, (mean.t().reshape(-1) if mean is not None else None), rstd.t().reshape(-1)


def gated_group_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    z: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
):
    """CPU stand-in for `fla.modules.norm.layernorm_gated.layer_norm_fwd`: (out, mean, rstd)."""
    y, mean, rstd = _group_gated_norm(x, weight, bias, eps, z, group_size, norm_before_gate, is_rms_norm)
    if out is None:
        return y.to(x.dtype), mean, rstd
    out.copy_(y)
    return out, mean, rstd


def gated_group_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    z: torch.Tensor | None = None,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    is_rms_norm: bool = False,
    recompute_output: bool = False,
    dz: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
):
    """CPU stand-in for `fla.modules.norm.layernorm_gated.layer_norm_bwd`: (dx, dw, db, dz[, out])."""
    # eps is passed here, so differentiating the forward is exact and covers both gate placements.
    leaves = [t.detach().float().requires_grad_() for t in (x, weight)]
    leaves += [t.detach().float().requires_grad_() if t is not None else None for t in (bias, z)]
    with torch.enable_grad():
        y, _, _ = _group_gated_norm(*leaves[:3], eps, leaves[3], group_size, norm_before_gate, is_rms_norm)
        wanted = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(y, wanted, dy.float()))
    dx, dw = next(grads).to(x.dtype), next(grads).to(weight.dtype)
    db = next(grads).to(bias.dtype) if bias is not None else None
    if z is not None:
        dz_val = next(grads)
        dz = dz.copy_(dz_val) if dz is not None else dz_val.to(z.dtype)
    if not recompute_output:
        return dx, dw, db, dz
    y = y.detach()
    out = out.copy_(y) if out is not None else y.to(x.dtype)
    return dx, dw, db, dz, out


# ---------------------------------------------------------------------------------------------
# fla.modules.norm.l2norm: l2norm_fwd / l2norm_bwd
# ---------------------------------------------------------------------------------------------

def l2norm_fwd(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None):
    """CPU stand-in for `fla.modules.norm.l2norm.l2norm_fwd`: (y, rstd)."""
    y, rstd = _l2_normalize(x, eps)
    return y.to(x.dtype if output_dtype is None else output_dtype), rstd


def l2norm_bwd(y: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor, eps: float = 1e-6):
    """CPU stand-in for `fla.modules.norm.l2norm.l2norm_bwd`: dx."""
    yf, dyf = y.float(), dy.float()
    dx = (dyf - (dyf * yf).sum(-1, keepdim=True) * yf) * rstd.float()[..., None]
    return dx.to(y.dtype)


# ---------------------------------------------------------------------------------------------
# fla.modules.activations: sigmoid, swish (ACT2FN), logsigmoid, swiglu (swiglu_linear, GatedMLP)
# ---------------------------------------------------------------------------------------------

def sigmoid_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.sigmoid_fwd`."""
    return torch.sigmoid(x.float()).to(x.dtype)


def sigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.sigmoid_bwd`."""
    return (dy.float() * _act_grad(x.float(), 'sigmoid')).to(x.dtype)


def swish_fwd(x: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.swish_fwd` (silu)."""
    return F.silu(x.float()).to(x.dtype)


def swish_bwd(x: torch.Tensor, dy: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.swish_bwd`."""
    return (dy.float() * _act_grad(x.float(), 'silu')).to(x.dtype)


def logsigmoid_fwd(x: torch.Tensor, temperature: float = 1., output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.logsigmoid_fwd`: logsigmoid(x) / temperature."""
    return (F.logsigmoid(x.float()) / temperature).to(x.dtype)


def logsigmoid_bwd(x: torch.Tensor, dy: torch.Tensor, temperature: float = 1.,
                   output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.logsigmoid_bwd`."""
    return (dy.float() * torch.sigmoid(-x.float()) / temperature).to(x.dtype)


def swiglu_fwd(x: torch.Tensor, y: torch.Tensor, output_contiguous: bool = False) -> torch.Tensor:
    """CPU stand-in for `fla.modules.activations.swiglu_fwd`: silu(x) * y."""
    return (F.silu(x.float()) * y.float()).to(x.dtype)


def swiglu_fwdbwd(
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Tensor,
    use_weight: bool = False,
    output_contiguous: bool = False,
):
    """CPU stand-in for `fla.modules.activations.swiglu_fwdbwd`: (dx, dy[, silu(x) * y])."""
    xf, yf, gf = x.float(), y.float(), g.float()
    dx = (gf * yf * _act_grad(xf, 'silu')).to(x.dtype)
    dy = (gf * F.silu(xf)).to(y.dtype)
    if use_weight:
        return dx, dy, (F.silu(xf) * yf).to(x.dtype)
    return dx, dy


# ---------------------------------------------------------------------------------------------
# fla.modules.causal_conv1d: causal_conv1d_fwd / _bwd / _update / _update_states (ShortConvolution)
# ---------------------------------------------------------------------------------------------

def _sequences(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> list[torch.Tensor]:
    """[B, T, D] (or packed [1, T, D] / [T, D] with cu_seqlens) -> list of N [T_n, D] views."""
    if cu_seqlens is None:
        return list(x.unbind(0))
    flat = x.reshape(-1, x.shape[-1])
    bounds = cu_seqlens.tolist()
    return [flat[bos:eos] for bos, eos in zip(bounds[:-1], bounds[1:])]


def _conv_one(x, weight, bias, residual, history, activation):
    """Depthwise causal conv of one sequence x [T, D] whose W - 1 preceding inputs are history [D, W - 1]."""
    xs = torch.cat([history.float(), x.float().t()], dim=1)[None]
    y = F.conv1d(xs, weight.float()[:, None], None if bias is None else bias.float(), groups=weight.shape[0])
    y = _act(y[0].t(), activation)
    if residual is not None:
        y = y + residual.float()
    return y


def _conv_states(x: torch.Tensor, state_len: int, initial_state, cu_seqlens) -> torch.Tensor:
    states = []
    for n, xn in enumerate(_sequences(x, cu_seqlens)):
        prev = initial_state[n] if initial_state is not None else xn.new_zeros(xn.shape[-1], state_len)
        states.append(torch.cat([prev.to(xn.dtype), xn.t()], dim=1)[:, -state_len:])
    return torch.stack(states)


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
    cu_seqlens: torch.Tensor | None = None,
):
    """Differentiable depthwise causal conv: x [B, T, D] (B = 1 with cu_seqlens), weight [D, W],
    initial_state / final state [N, D, W] (the last W inputs, newest last). Returns (y, final_state)."""
    W = weight.shape[1]
    shape = x.shape
    x = x.reshape(*shape[:2], -1) if x.dim() > 2 else x
    res = _sequences(residual.reshape(x.shape), cu_seqlens) if residual is not None else None
    ys = []
    for n, xn in enumerate(_sequences(x, cu_seqlens)):
        history = initial_state[n, :, 1:] if initial_state is not None else xn.new_zeros(xn.shape[-1], W - 1)
        ys.append(_conv_one(xn, weight, bias, None if res is None else res[n], history, activation))
    y = torch.stack(ys) if cu_seqlens is None else torch.cat(ys)[None]
    final_state = _conv_states(x, W, initial_state, cu_seqlens) if output_final_state else None
    return y.to(x.dtype).view(shape), final_state


def causal_conv1d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    activation: str | None = None,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    chunk_size: int = 64,
    layout_fallback: bool = False,
):
    """CPU stand-in for `fla.modules.causal_conv1d.causal_conv1d_fwd`: (y, final_state)."""
    return causal_conv1d_torch(x, weight, bias, residual, initial_state, output_final_state, activation, cu_seqlens)


def causal_conv1d_bwd(
    x: torch.Tensor,
    dy: torch.Tensor,
    dht: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    chunk_size: int = 64,
    layout_fallback: bool = False,
):
    """CPU stand-in for `fla.modules.causal_conv1d.causal_conv1d_bwd`: (dx, dw, db, dresidual, dh0)."""
    # the gradient through the final state only reaches x and initial_state, and is linear in them.
    inputs = {'x': x, 'weight': weight, 'bias': bias, 'initial_state': initial_state}
    leaves = {k: v.detach().float().requires_grad_() for k, v in inputs.items() if v is not None}
    with torch.enable_grad():
        y, ht = causal_conv1d_torch(
            leaves['x'], leaves['weight'], leaves.get('bias'), None, leaves.get('initial_state'),
            dht is not None, activation, cu_seqlens,
        )
        outs, grads_out = [y], [dy.float().reshape(y.shape)]
        if dht is not None:
            outs.append(ht)
            grads_out.append(dht.float())
        grads = dict(zip(leaves, torch.autograd.grad(outs, list(leaves.values()), grads_out, allow_unused=True)))

    def cast(name):
        g = grads.get(name)
        if inputs[name] is None:
            return None
        return torch.zeros_like(inputs[name]) if g is None else g.to(inputs[name].dtype)
    dr = dy if residual is not None else None
    return cast('x'), cast('weight'), cast('bias'), dr, cast('initial_state')


def causal_conv1d_update_states(
    x: torch.Tensor,
    state_len: int,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """CPU stand-in for `fla.modules.causal_conv1d.causal_conv1d_update_states`: [N, D, state_len]."""
    return _conv_states(x, state_len, initial_state, cu_seqlens)


def causal_conv1d_update(
    x: torch.Tensor,
    cache: torch.Tensor,
    residual: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
):
    """CPU stand-in for `fla.modules.causal_conv1d.causal_conv1d_update`: one token per sequence,
    x [N, D], [1, N, D] or [N, 1, D]; cache [N, D, W] is shifted and updated in place. Returns (y, cache)."""
    shape = x.shape
    xf = x.reshape(-1, cache.shape[1]).float()
    window = torch.cat([cache[:, :, 1:].float(), xf[:, :, None]], dim=2)
    y = (window * weight.float()).sum(-1) if weight is not None else window.sum(-1)
    if bias is not None:
        y = y + bias.float()
    y = _act(y, activation)
    if residual is not None:
        y = y + residual.reshape(y.shape).float()
    cache.copy_(window)
    return y.to(x.dtype).view(shape), cache


# ---------------------------------------------------------------------------------------------
# fla.modules.fused_cross_entropy / fused_linear_cross_entropy: cross entropy kernels
# ---------------------------------------------------------------------------------------------

def _ce_logits(logits: torch.Tensor, logit_scale: float, logit_softcapping: float | None):
    x = logits.float() * logit_scale
    if logit_softcapping is None:
        return x, None
    t = torch.tanh(x / logit_softcapping)
    return logit_softcapping * t, t


def cross_entropy_fwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    lse_square_scale: float = 0.0,
    logit_softcapping: float | None = None,
    ignore_index: int = -100,
    process_group=None,
):
    """CPU stand-in for `fla.modules.fused_cross_entropy.cross_entropy_fwd`: float32 per-row
    (loss including the z-loss, z_loss, lse), total_classes, class_start_idx; ignored rows give 0."""
    if process_group is not None:
        raise NotImplementedError("vocabulary-parallel cross entropy has no CPU path")
    x, _ = _ce_logits(logits, logit_scale, logit_softcapping)
    V = x.shape[-1]
    lse = torch.logsumexp(x, dim=-1)
    valid = target != ignore_index
    target_logit = x.gather(-1, torch.where(valid, target, 0)[:, None])[:, 0]
    if label_smoothing > 0:
        loss = lse - (1 - label_smoothing) * target_logit - label_smoothing * x.sum(-1) / V
    else:
        loss = lse - target_logit
    z_loss = lse_square_scale * lse.square()
    zero = loss.new_zeros(())
    return torch.where(valid, loss + z_loss, zero), torch.where(valid, z_loss, zero), lse, V, 0


def cross_entropy_bwd(
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    dloss: torch.Tensor,
    label_smoothing: float = 0.0,
    logit_scale: float = 1.0,
    lse_square_scale: float = 0.0,
    logit_softcapping: float | None = None,
    ignore_index: int = -100,
    total_classes: int | None = None,
    class_start_idx: int = 0,
    inplace_backward: bool = False,
):
    """CPU stand-in for `fla.modules.fused_cross_entropy.cross_entropy_bwd`: dlogits (written into
    logits when inplace_backward, as fla does)."""
    x, t = _ce_logits(logits, logit_scale, logit_softcapping)
    V = x.shape[-1] if total_classes is None else total_classes
    probs = torch.exp(x - lse[:, None].float())
    grad = probs * (1 + 2 * lse_square_scale * lse[:, None].float())
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target - class_start_idx, 0), x.shape[-1]).float()
    grad = grad - (1 - label_smoothing) * onehot - label_smoothing / V
    if t is not None:
        grad = grad * (1 - t.square())
    scale = torch.where(valid, dloss.float(), 0.0) * logit_scale
    grad = grad * scale[:, None]
    if inplace_backward:
        return logits.copy_(grad)
    return grad.to(logits.dtype)


def fused_linear_cross_entropy_bwd(do: torch.Tensor, dx: torch.Tensor, dw: torch.Tensor, db: torch.Tensor | None):
    """CPU stand-in for `fla.modules.fused_linear_cross_entropy.fused_linear_cross_entropy_bwd`:
    scales the gradients precomputed in the forward by the incoming loss gradient, in place."""
    for grad in (dx, dw, db):
        if grad is not None:
            grad.mul_(do.to(grad.dtype))
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# fla.ops.gated_delta_rule: chunk_gated_delta_rule / fused_recurrent_gated_delta_rule
# ---------------------------------------------------------------------------------------------

def _gdn_cpu(
    naive, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
    use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first, cu_seqlens,
):
    """Gated delta rule through fla's naive references, honouring the options fla's layers pass."""
    H, HV = q.shape[2], v.shape[2]
    if HV % H != 0:
        raise ValueError(f"v has {HV} heads, not a multiple of q/k's {H}")
    if scale is None:
        scale = k.shape[-1] ** -0.5
    if use_qk_l2norm_in_kernel:
        q, k = _l2_normalize(q)[0], _l2_normalize(k)[0]
    if HV != H:
        q, k = (t.repeat_interleave(HV // H, dim=2) for t in (q, k))
    if use_gate_in_kernel:
        g = naive_gdn_gate(g, A_log, dt_bias)
    if beta is None:
        beta = torch.ones_like(v[..., 0])
    if use_beta_sigmoid_in_kernel:
        beta = torch.sigmoid(beta.float()) * (2.0 if allow_neg_eigval else 1.0)
    if initial_state is not None and state_v_first:
        initial_state = initial_state.transpose(-1, -2)
    if cu_seqlens is None:
        seqs = [(slice(None), None)]
    else:
        bounds = cu_seqlens.tolist()
        seqs = [(slice(None), slice(bos, eos)) for bos, eos in zip(bounds[:-1], bounds[1:])]
    outs, states = [], []
    for n, (_, span) in enumerate(seqs):
        sel = (lambda t: t) if span is None else (lambda t, s=span: t[:, s])
        h0 = initial_state if span is None else (initial_state[n:n + 1] if initial_state is not None else None)
        o, ht = naive(
            q=sel(q).float(), k=sel(k).float(), v=sel(v).float(), beta=sel(beta).float(), g=sel(g).float(),
            scale=scale, initial_state=None if h0 is None else h0.float(), output_final_state=output_final_state,
        )
        outs.append(o)
        states.append(ht)
    o = torch.cat(outs, dim=1).to(v.dtype)
    final_state = None
    if output_final_state:
        final_state = torch.cat(states, dim=0)
        if state_v_first:
            final_state = final_state.transpose(-1, -2)
        final_state = final_state.contiguous()
    return o, final_state


def _reject_unsupported(kwargs: dict, name: str) -> None:
    if kwargs.get('cp_context') is not None:
        raise NotImplementedError(f"{name}: context parallelism has no CPU path")
    for key in ('gk', 'gv'):
        if kwargs.get(key) is not None:
            raise NotImplementedError(f"{name}: per-channel decay `{key}` has no CPU path")


def _take_state_layout(state_v_first: bool, kwargs: dict) -> bool:
    if 'transpose_state_layout' in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        return bool(kwargs.pop('transpose_state_layout'))
    return state_v_first


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    cu_seqlens_cpu: torch.LongTensor | None = None,
    chunk_indices: torch.LongTensor | None = None,
    cp_context=None,
    **kwargs,
):
    """CPU stand-in for `fla.ops.gated_delta_rule.chunk_gated_delta_rule` (same arguments and
    returns), computed with fla's `naive_chunk_gated_delta_rule` per sequence."""
    _reject_unsupported({'cp_context': cp_context}, 'chunk_gated_delta_rule')
    state_v_first = _take_state_layout(state_v_first, kwargs)
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    chunk_size = kwargs.get('chunk_size', 64)

    def naive(**kw):
        return naive_chunk_gated_delta_rule(chunk_size=chunk_size, **kw)
    return _gdn_cpu(
        naive, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
        kwargs.get('use_gate_in_kernel', False), kwargs.get('A_log'), kwargs.get('dt_bias'),
        use_beta_sigmoid_in_kernel, allow_neg_eigval, state_v_first, cu_seqlens,
    )


def fused_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    scale: float = None,
    initial_state: torch.Tensor = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    **kwargs,
):
    """CPU stand-in for `fla.ops.gated_delta_rule.fused_recurrent_gated_delta_rule` (same arguments
    and returns), computed with fla's `naive_recurrent_gated_delta_rule` per sequence."""
    _reject_unsupported({'gk': gk, 'gv': gv}, 'fused_recurrent_gated_delta_rule')
    state_v_first = _take_state_layout(state_v_first, kwargs)
    if use_gate_in_kernel and A_log is None:
        raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True`.")
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    if g is None:
        g = v.new_zeros(v.shape[:3], dtype=torch.float32)
        use_gate_in_kernel = False
    return _gdn_cpu(
        naive_recurrent_gated_delta_rule, q, k, v, g, beta, scale, initial_state, output_final_state,
        use_qk_l2norm_in_kernel, use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel,
        allow_neg_eigval, state_v_first, cu_seqlens,
    )


# ---------------------------------------------------------------------------------------------
# fla.ops.log_linear_attn: chunk_log_linear_attn (LogLinearMamba2)
# ---------------------------------------------------------------------------------------------

def chunk_log_linear_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    level_scales: torch.Tensor,
    initial_state=None,
    output_final_state: bool = False,
    cu_seqlens: torch.LongTensor | None = None,
    scale: float | None = 1.0,
):
    """CPU stand-in for `fla.ops.log_linear_attn.chunk_log_linear_attn`, computed with fla's quadratic
    `naive_log_linear_attn`. The state it returns is a `LogLinearAttentionState` whose *_prev fields
    hold the whole history of the sequences (offsets = its length, ht empty): continuing from it
    recomputes over the history, so decoding is exact but costs O(history) per step, and such a
    state is not interchangeable with the GPU kernel's hierarchical one."""
    from fla.ops.log_linear_attn.chunk import LogLinearAttentionState
    from fla.ops.log_linear_attn.naive import naive_log_linear_attn

    if scale is None:
        scale = q.shape[-1] ** -0.5
    if cu_seqlens is not None:
        if initial_state is not None or output_final_state:
            raise NotImplementedError("chunk_log_linear_attn on CPU: states with cu_seqlens are not supported")
        bounds = cu_seqlens.tolist()
        outs = [
            chunk_log_linear_attn(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], level_scales[:, s:e], scale=scale)[0]
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
        return torch.cat(outs, dim=1), None
    inputs = [q, k, v, g, level_scales]
    past = 0
    if initial_state is not None:
        if initial_state.ht.numel() != 0:
            raise ValueError("chunk_log_linear_attn on CPU continues only from states it produced itself")
        prev = [initial_state.q_prev, initial_state.k_prev, initial_state.v_prev,
                initial_state.g_prev, initial_state.level_scales_prev]
        past = prev[0].shape[1]
        inputs = [torch.cat([p.to(x.dtype), x], dim=1) for p, x in zip(prev, inputs)]
    o = naive_log_linear_attn(*(x.float() for x in inputs), scale=scale)[:, past:].to(v.dtype)
    if not output_final_state:
        return o, None
    B, T, H, K, V = *v.shape[:3], q.shape[-1], v.shape[-1]
    state = LogLinearAttentionState(
        ht=v.new_zeros(B, 0, H, K, V, dtype=torch.float32),
        offsets=torch.full((B,), past + T, dtype=torch.int32, device=v.device),
        q_prev=inputs[0].detach(), k_prev=inputs[1].detach(), v_prev=inputs[2].detach(),
        g_prev=inputs[3].detach(), level_scales_prev=inputs[4].detach(),
    )
    return o, state
