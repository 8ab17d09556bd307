"""Run 42: picks the segment length and the lead stream's priority from the sweep (mean of both passes at
64K) and writes them into chunk_inter.py; prints what it decided."""
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
    print(f"{k:<28} 64K mean {v:7.3f} ms over {len(times[k])}")
seg = {16: times["defaults"] + times.get("segments of 16 chunks", [])}
for k, v in times.items():
    m = re.match(r"segments of (\d+) chunks", k)
    if m and m.group(1) != "16":
        seg[int(m.group(1))] = v
seg = {n: sum(v) / len(v) for n, v in seg.items()}
print("segments:", {n: round(v, 3) for n, v in sorted(seg.items())})
best = min(seg, key=seg.get)
path = "fla_loglinear/ops/log_linear_gated_delta_rule/chunk_inter.py"
src = open(path).read()
if mean["no segmented forward"] < seg[best]:
    src = src.replace("SEGMENTED = True\n", "SEGMENTED = False\n")
    print("decided: no segmented forward")
else:
    src = src.replace("SEGMENT_CHUNKS = 16\n", f"SEGMENT_CHUNKS = {best}\n")
    print(f"decided: segments of {best} chunks")
if mean["no lead priority"] < seg[16] - 0.1:
    src = src.replace("LEAD_PRIORITY = True\n", "LEAD_PRIORITY = False\n")
    print("decided: no lead priority")
else:
    print("decided: lead priority")
open(path, "w").write(src)
