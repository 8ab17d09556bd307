"""Run 43: from the sweep's passes at 64K (mean), keeps the lead stream's priority only where it beats
going without by over 0.15 ms; takes grads BV=64 / 128 and segments of 32 chunks only where they beat the
defaults by over 0.15 ms; writes the choices into chunk_inter.py and prints them."""
import re
import sys
from collections import defaultdict

times = defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"(.+?)\s+T=32768:\s+([\d.]+) ms.*T=65536:\s+([\d.]+) ms", line)
    if m:
        times[m.group(1).strip()].append(float(m.group(3)))
mean = {k: sum(v) / len(v) for k, v in times.items()}
for k, v in sorted(mean.items(), key=lambda kv: kv[1]):
    print(f"{k:<28} 64K mean {v:7.3f} ms over {len(times[k])}: {times[k]}")
path = "fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py"
src = open(path).read()
d = mean["defaults"]
if not d < mean["no lead priority"] - 0.15:
    src = src.replace("LEAD_PRIORITY = True\n", "LEAD_PRIORITY = False\n")
    print("decided: no lead priority")
grads = {bv: mean[f"grads BV={bv}"] for bv in (64, 128)}
bv = min(grads, key=grads.get)
if grads[bv] < d - 0.15:
    src = src.replace("GRADS_BV = None\n", f"GRADS_BV = {bv}\n")
    print(f"decided: grads BV={bv}")
if mean["segments of 32 chunks"] < d - 0.15:
    src = src.replace("SEGMENT_CHUNKS = 24\n", "SEGMENT_CHUNKS = 32\n")
    print("decided: segments of 32 chunks")
open(path, "w").write(src)
