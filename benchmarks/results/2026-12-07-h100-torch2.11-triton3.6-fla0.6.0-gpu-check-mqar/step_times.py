"""Run 0: step times of tiny MQAR models, and a profile of the 125M LL GDN train step (current main)."""
import sys, time, json, os
import torch
import fla.ops.common.chunk_o as chunk_o
chunk_o.IS_NVIDIA_HOPPER = False  # stock GDN timing only (grads invalid)
import fla_loglinear
from fla_loglinear.levels import num_levels
from fla.models import GatedDeltaNetConfig, Mamba2Config
from transformers import AutoModelForCausalLM
fla_loglinear.patch(cpu=False)
OUT = os.environ.get("OUT", ".")
res = {}

def tiny(arch, width, ll):
    common = dict(vocab_size=8192, hidden_size=width, num_hidden_layers=2, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, tie_word_embeddings=False, log_linear=ll, fuse_cross_entropy=False)
    if ll: common["log_linear_levels"] = num_levels(256)
    if arch == "gdn":
        return GatedDeltaNetConfig(num_heads=2, head_dim=width // 2, expand_v=1.0, hidden_ratio=2, **common)
    return Mamba2Config(head_dim=width // 4, state_size=width // 2, expand=2, n_groups=1, chunk_size=16,
                        initializer_range=0.08, conv_init=0.5, dt_min=0.01, A_init_range=(1, 4), **common)

def time_steps(model, B, T, n=20, warm=5):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(1, 8192, (B, T), device="cuda")
    def step():
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids).logits.flatten(0, 1).float(), ids.flatten())
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    for _ in range(warm): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): step()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / n * 1e3

for arch in ("gdn", "mamba2"):
    for width in (32, 64, 128):
        for ll in (False, True):
            torch.manual_seed(0)
            m = AutoModelForCausalLM.from_config(tiny(arch, width, ll)).cuda()
            try:
                ms = time_steps(m, 64, 256)
            except Exception as e:
                ms = repr(e)[:200]
            key = f"{arch} w{width} {'LL' if ll else 'stock'}"
            res[key] = ms; print(key, ms, flush=True)

# 125M LL GDN at 8K: profile
from torch.profiler import profile, ProfilerActivity
for ll in (False, True):
    kw = dict(hidden_size=768, num_hidden_layers=12, num_heads=6, head_dim=128, expand_v=2.0, vocab_size=32000, log_linear=ll)
    if ll: kw["log_linear_levels"] = num_levels(8192)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(GatedDeltaNetConfig(**kw))
    m = m.to(torch.bfloat16)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    ids = torch.randint(0, 32000, (4, 8192), device="cuda")
    def step():
        loss = m(input_ids=ids, labels=ids).loss; loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(2): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(3): step()
    torch.cuda.synchronize(); ms = (time.perf_counter() - t) / 3 * 1e3
    print(f"125M GDN {'LL' if ll else 'stock'} T=8K B=4: {ms:.1f} ms/step, {4*8192/ms*1e3:,.0f} tok/s, peak {torch.cuda.max_memory_allocated()/2**30:.1f} GiB", flush=True)
    res[f"125M {'LL' if ll else 'stock'}"] = ms
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(); torch.cuda.synchronize()
    with open(f"{OUT}/prof-{'ll' if ll else 'stock'}.txt", "w") as f:
        f.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=70))
        f.write("\n\nby CPU total\n")
        f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
    del m, opt; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
json.dump(res, open(f"{OUT}/run0.json", "w"), indent=1)
