"""Registers / spills of the GDN decode kernel as compiled for this GPU (one in-place step, B=64, pos=100000)."""
import sys
import torch
import torch.nn.functional as F
from fla_loglinear.levels import num_levels
from fla_loglinear.state import FenwickState
from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent as fr
from fla_loglinear.ops.log_linear_gated_delta_rule import fused_recurrent_log_linear_gated_delta_rule

seen = []
orig = fr.fused_recurrent_fwd_kernel.run
def run(*a, **kw):
    kern = orig(*a, **kw)
    seen.append(kern)
    return kern
fr.fused_recurrent_fwd_kernel.run = run
B, POS, H, K, V = 64, 100_000, 16, 128, 128
dev, bf = "cuda", torch.bfloat16
q = torch.randn(B, 1, H, K, device=dev, dtype=bf)
k = F.normalize(torch.randn(B, 1, H, K, device=dev), dim=-1).to(bf)
v = torch.randn(B, 1, H, V, device=dev, dtype=bf)
g = F.logsigmoid(torch.randn(B, 1, H, device=dev) + 3.0)
beta = torch.rand(B, 1, H, device=dev).to(bf)
L = num_levels(2 * POS)
lam = torch.rand(B, 1, H, L, device=dev) + 0.5
st = FenwickState(torch.randn(B, H, L, K, V, device=dev) * 0.1, torch.full((B,), POS, device=dev, dtype=torch.int64))
for inplace in (True, False):
    fused_recurrent_log_linear_gated_delta_rule(q, k, v, g, beta, lam, initial_state=st, output_final_state=True,
                                                inplace_final_state=inplace)
torch.cuda.synchronize()
for kern in seen[:2]:
    md = kern.metadata
    print(sys.argv[1] if len(sys.argv) > 1 else "", "n_regs", kern.n_regs, "n_spills", kern.n_spills,
          "num_warps", md.num_warps, "shared", md.shared)
