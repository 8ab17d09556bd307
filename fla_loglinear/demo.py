"""The main job: stock vs log-linear Gated DeltaNet and Mamba-2 on multi-query associative recall.

Builds a small stock fla model per family (after ``fla_loglinear.patch()``), deep-copies it and
turns the copy log-linear with ``fla_loglinear.convert(lambda_init="identity")``, so both start from
the same weights and the same logits; trains both on the same seeded MQAR batches in the same
order, and reports loss, held-out recall accuracy (query positions only) and one ``generate()``
call of a log-linear model.  On a CPU the defaults finish in a few minutes on two cores; on a GPU
the same code runs fla's / our Triton kernels at larger settings.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fla_loglinear.levels import num_levels
from fla_loglinear.mqar import IGNORE_INDEX, MQARBatch, mqar_splits, vocab_layout

__all__ = [
    "DemoSettings", "Training", "build_model", "log_linear_twin", "train_model", "evaluate", "generate_example",
    "run_demo", "fla_refuses_training", "progress_bar",
]

ARCHS = ("gdn", "mamba2")
ARCH_NAMES = {"gdn": "Gated DeltaNet", "mamba2": "Mamba-2"}


@dataclass
class DemoSettings:
    """Everything a demo run depends on; the same settings and seed give the same numbers on a CPU."""

    archs: tuple[str, ...] = ARCHS
    device: str = "cpu"
    # CPU defaults: ~3.5 minutes for the four models on a loaded 2-core machine, and each of them
    # (stock Mamba-2 included) gets clearly above chance; T = 64 or 8 pairs need more steps than that.
    seq_len: int = 32
    steps: int = 450
    batch_size: int = 16
    kv_pairs: int = 4
    vocab_size: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    lr: float = 5e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    num_test: int = 256
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_device(cls, device=None, model="all", seq_len=None, steps=None, batch_size=None, kv_pairs=None, seed=0):
        """Device-dependent defaults, overridden by every argument that is not None."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        gpu = torch.device(device).type == "cuda"
        base = (
            cls(device=device, seq_len=256, steps=1500, batch_size=64, kv_pairs=32, vocab_size=256,
                hidden_size=128, num_layers=2, lr=2e-3, warmup_steps=100, num_test=1024)
            if gpu
            else cls(device=device)
        )
        base.archs = ARCHS if model == "all" else (model,)
        base.seed = seed
        if seq_len is not None:
            base.seq_len = seq_len
        if steps is not None:
            base.steps = steps
            base.warmup_steps = min(base.warmup_steps, max(1, steps // 10))
        if batch_size is not None:
            base.batch_size = batch_size
        if kv_pairs is not None:
            base.kv_pairs = kv_pairs
        elif seq_len is not None:
            # keep the task solvable at short lengths: pairs plus one query pair per key
            base.kv_pairs = max(1, min(base.kv_pairs, seq_len // 4))
        return base

    def validate(self) -> None:
        """Raise ValueError naming the setting when the task cannot be built."""
        for name in ("seq_len", "steps", "batch_size", "kv_pairs", "num_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.seq_len < 4 * self.kv_pairs:
            raise ValueError(
                f"--seq-len {self.seq_len} is too short for {self.kv_pairs} key-value pairs "
                f"(needs >= 4 * kv-pairs = {4 * self.kv_pairs}); lower --kv-pairs or raise --seq-len"
            )
        num_keys = len(vocab_layout(self.vocab_size)[0])
        if self.kv_pairs > num_keys:
            raise ValueError(f"--kv-pairs {self.kv_pairs} exceeds the {num_keys} distinct keys of the vocabulary")
        bad = set(self.archs) - set(ARCHS)
        if bad:
            raise ValueError(f"unknown model(s) {sorted(bad)}; choose from {', '.join(ARCHS)}")

    @property
    def num_train(self) -> int:
        # every step sees fresh sequences up to this cap, then the set is cycled in a new order
        return min(self.steps * self.batch_size, 20_000)


def _config(arch: str, s: DemoSettings):
    from fla.models import GatedDeltaNetConfig, Mamba2Config

    # No special tokens: the MQAR filler is token 0, and an eos / pad id inside the
    # vocabulary would make generate() stop early or mask real tokens.
    common = dict(
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_layers,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
        use_cache=True,
    )
    if arch == "gdn":
        return GatedDeltaNetConfig(num_heads=2, head_dim=s.hidden_size // 2, expand_v=1.0, hidden_ratio=2, **common)
    if arch == "mamba2":
        # fla's init defaults (weights and conv taps ~ N(0, 0.02), dt from 0.001, A up to 16) leave
        # a tiny Mamba-2 at chance on MQAR for thousands of steps: the SSM term is ~1e-3 of the D
        # skip and most heads forget within a few tokens.  Larger weights, mamba_ssm's conv scale,
        # dt >= 0.01 and slower decays (A in [1, 4]) let the stock model learn recall in the budget.
        # chunk_size only sets how fla's PyTorch SSD path (used without mamba_ssm) blocks the
        # sequence: its C x C x heads x dims intermediates make 64 four times slower than 16 here.
        # head_dim >= 16: the scalar log-linear kernels' tl.dot tiles need it (a width-32 model gets 4 heads)
        return Mamba2Config(head_dim=max(16, s.hidden_size // 4), state_size=s.hidden_size // 2, expand=2, n_groups=1,
                            chunk_size=16, initializer_range=0.08, conv_init=0.5, dt_min=0.01,
                            A_init_range=(1, 4), **common)
    raise ValueError(f"unknown model {arch!r}; choose from {', '.join(ARCHS)}")


def build_model(arch: str, settings: DemoSettings) -> torch.nn.Module:
    """A small stock fla causal LM of family ``arch`` ('gdn' or 'mamba2'), seeded by ``settings.seed``."""
    from transformers import AutoModelForCausalLM

    from fla_loglinear.patches import patch

    # cpu=True adds PyTorch paths for fla's Triton-only modules, taken only for CPU tensors
    patch(cpu=torch.device(settings.device).type == "cpu")
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_config(_config(arch, settings))
    return model.to(settings.device)


def log_linear_twin(
    model: torch.nn.Module, settings: DemoSettings, lambda_init: str = "identity", lambda_form: str | None = None
) -> torch.nn.Module:
    """A deep copy of the stock ``model`` converted to log-linear mode (identity init: every lambda 1).

    The twin starts from the same weights as ``model`` (and, at the identity init, gives the same
    logits); trained on the same batches, any difference between the two comes from the lambdas.
    """
    from fla_loglinear.patches import convert

    twin = copy.deepcopy(model)
    # the lambda projection's random parts are drawn here: seed them so runs repeat
    torch.manual_seed(settings.seed + 2)
    # as many lambdas as the sequence has Fenwick levels (the default 21 covers 1M tokens)
    return convert(twin, num_levels=num_levels(settings.seq_len), lambda_init=lambda_init, lambda_form=lambda_form)


def _query_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # ignore_index rather than logits[mask]: a boolean index waits for the GPU to count the mask
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def _lr_factor(step: int, s: DemoSettings) -> float:
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _decays(name: str, p: torch.nn.Parameter) -> bool:
    # Matrices only, minus embeddings and the lambda projection: decaying weight_out pulls every
    # lambda back to 1, i.e. it would penalise exactly what the log-linear twin adds.
    return p.ndim >= 2 and "embed" not in name and "level_proj" not in name and not getattr(p, "_no_weight_decay", False)


def _param_groups(model: torch.nn.Module, s: DemoSettings) -> list[dict]:
    # frozen parameters (the sweep's frozen-lambda parent) are left out of the optimizer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if _decays(n, p)], "weight_decay": s.weight_decay},
        {"params": [p for n, p in named if not _decays(n, p)], "weight_decay": 0.0},
    ]


@dataclass
class Training:
    """What :func:`train_model` measured: per-step losses, wall seconds, and ms per step after warm-up."""

    losses: list[float]
    seconds: float
    ms_per_step: float


def progress_bar(iterable, desc: str, progress: bool):
    """tqdm bar that redraws at most every 5 s when stdout is not a terminal (logs, CI), 0.5 s on one."""
    import sys

    from tqdm.auto import tqdm

    interval = 0.5 if sys.stdout.isatty() else 5.0
    return tqdm(iterable, desc=desc, unit="step", disable=not progress, dynamic_ncols=True,
                mininterval=interval, maxinterval=max(10.0, interval))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train_model(model, train: MQARBatch, settings: DemoSettings, desc: str = "", progress: bool = True) -> Training:
    """AdamW on the query-position cross entropy over the parameters that require grad.

    Losses stay on the device until the end (a ``.item()`` per step would stall the queue of
    kernel launches on every step); with a bar, the shown loss is read every 25 steps.  ``ms_per_step``
    is timed from the end of the first tenth of the steps (at least one: Triton's compile) to the end.
    """
    s = settings
    gen = torch.Generator().manual_seed(s.seed + 1)
    opt = torch.optim.AdamW(_param_groups(model, s), lr=s.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, s))
    # the set and the batch order live on the device: a copy from pageable host memory each step would
    # wait for every queued kernel, and these small models are bound by how fast launches are queued
    train = train.to(s.device)
    order = torch.randperm(len(train), generator=gen).to(s.device)
    cursor = 0
    losses: list[torch.Tensor] = []
    trained = [p for p in model.parameters() if p.requires_grad]
    warm = max(1, s.steps // 10) if s.steps > 1 else 0
    model.train()
    start = timed_from = time.perf_counter()
    bar = progress_bar(range(s.steps), desc, progress)
    for step in bar:
        if step == warm:
            _sync(s.device)
            timed_from = time.perf_counter()
        if cursor + s.batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=gen).to(s.device), 0
        batch = train[order[cursor:cursor + s.batch_size]]
        cursor += s.batch_size
        logits = model(input_ids=batch.inputs).logits
        loss = _query_loss(logits, batch.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if progress and (step % 25 == 0 or step == s.steps - 1):
            bar.set_postfix(loss=f"{losses[-1].item():.3f}", refresh=False)
    bar.close()
    _sync(s.device)
    end = time.perf_counter()
    return Training(torch.stack(losses).float().tolist(), end - start, 1000 * (end - timed_from) / (s.steps - warm))


@torch.no_grad()
def evaluate(model, test: MQARBatch, settings: DemoSettings, batch_size: int = 128) -> tuple[float, float]:
    """(loss, accuracy) over the query positions of the held-out sequences."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for i in range(0, len(test), batch_size):
        batch = test[slice(i, i + batch_size)].to(settings.device)
        logits = model(input_ids=batch.inputs).logits.float()
        mask = batch.query_mask
        loss_sum += F.cross_entropy(logits[mask], batch.targets[mask], reduction="sum").item()
        correct += (logits[mask].argmax(-1) == batch.targets[mask]).sum().item()
        total += mask.sum().item()
    return loss_sum / total, correct / total


@torch.no_grad()
def generate_example(model, test: MQARBatch, settings: DemoSettings, max_prompts: int = 4) -> dict:
    """One ``generate()`` call on held-out prompts that each end on a query key at the same position.

    Equal prompt lengths keep the batch free of padding.  The position is the last query of
    the first held-out sequence, i.e. the one furthest from the key-value pairs it recalls.
    """
    model.eval()
    pos = int(test.query_mask[0].nonzero().max())
    rows = test.query_mask[:, pos].nonzero().flatten()[:max_prompts]
    prompts = test.inputs[rows, : pos + 1].to(settings.device)
    expected = test.targets[rows, pos]
    out = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=1,
        do_sample=False,
        use_cache=True,
    )
    generated = out[:, pos + 1:].cpu()
    return {
        "prompt_length": pos + 1,
        "rows": rows.tolist(),
        "prompt_tails": test.inputs[rows, max(0, pos - 7): pos + 1].tolist(),
        "kv_pairs": [test.inputs[r, : 2 * settings.kv_pairs].tolist() for r in rows.tolist()],
        "generated": generated[:, 0].tolist(),
        "expected": expected.tolist(),
    }


def _print_generate(name: str, g: dict) -> None:
    print(f"\ngenerate() with {name}: prompts of {g['prompt_length']} tokens, each ending on a query key")
    for tail, kv, got, want in zip(g["prompt_tails"], g["kv_pairs"], g["generated"], g["expected"]):
        pairs = " ".join(f"{k}:{v}" for k, v in zip(kv[0::2], kv[1::2]))
        mark = "ok" if got == want else "wrong"
        print(f"  pairs [{pairs}]")
        print(f"    ... {' '.join(map(str, tail))} -> generated {got}, expected {want} ({mark})")


def _print_table(rows: list[dict], chance: float) -> None:
    head = f"{'model':<28}{'params':>10}{'final loss':>12}{'test loss':>11}{'recall acc':>12}{'steps/s':>9}"
    print("\n" + head)
    print("-" * len(head))
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:<28}{r['parameters']:>10,}  {r['skipped']}")
            continue
        print(
            f"{r['name']:<28}{r['parameters']:>10,}{r['final_loss']:>12.3f}{r['test_loss']:>11.3f}"
            f"{r['accuracy']:>12.1%}{r['timing']['steps_per_second']:>9.1f}"
        )
    print(f"(recall accuracy over query positions of held-out sequences; chance is {chance:.1%})")


def _plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: wrote results.json only, no loss-curve PNG "
              "(pip install matplotlib, or the package's [test] extra)")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in rows if "losses" in r):
        losses = torch.tensor(r["losses"])
        k = max(1, len(losses) // 50)  # a running mean keeps the curves readable at any step count
        smooth = losses.unfold(0, k, 1).mean(-1)
        ax.plot(range(k, len(losses) + 1), smooth.tolist(), label=r["name"], ls="-" if r["log_linear"] else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("MQAR query loss (running mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Multi-query associative recall: stock vs log-linear")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fla_refuses_training(arch: str, device: str) -> str | None:
    """Why fla will not train its stock ``arch`` model on ``device`` (None when it will).

    fla 0.6.0 raises in its gated backward (``chunk_bwd_dqkwg``, which the stock Gated DeltaNet
    uses) on Hopper GPUs with triton >= 3.4.0 and < 3.7.1, a triton that miscompiles it.  This is
    fla's own condition, read from its flags; the log-linear models do not use that kernel.
    """
    if arch != "gdn" or torch.device(device).type != "cuda":
        return None
    import fla.ops.common.chunk_o as chunk_o

    if all(getattr(chunk_o, f, False) for f in ("IS_NVIDIA_HOPPER", "TRITON_ABOVE_3_4_0")) and \
            not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True):
        return ("not trained: fla refuses its gated backward on Hopper GPUs with triton < 3.7.1 "
                "(upgrade triton to >= 3.7.1 or pip install tilelang)")
    return None


def run_demo(settings: DemoSettings, output: str | Path | None = None, progress: bool = True) -> dict:
    """Train and evaluate every model of ``settings``; print the table; write ``output``/results.json (+ PNG)."""
    s = settings
    s.validate()
    threads = torch.get_num_threads()
    if torch.device(s.device).type == "cpu":
        # The demo's tensors are tiny: intra-op threads buy little, and on a busy machine their
        # barriers stall every op (measured 0.3 s vs 25 s per step on a loaded 2-core box).
        # One thread also makes the numbers independent of the core count.
        torch.set_num_threads(1)
    try:
        return _run(s, output, progress)
    finally:
        torch.set_num_threads(threads)


def _run(s: DemoSettings, output, progress: bool) -> dict:
    import fla
    import transformers

    wall = time.perf_counter()
    train, test = mqar_splits(s.num_train, s.num_test, s.seq_len, s.kv_pairs, s.vocab_size, s.seed)
    chance = 1.0 / len(vocab_layout(s.vocab_size)[1])
    print(
        f"MQAR: {s.kv_pairs} key-value pairs in sequences of {s.seq_len} tokens, vocabulary {s.vocab_size}; "
        f"{len(train)} training / {len(test)} held-out sequences; device {s.device}, seed {s.seed}"
    )

    rows, models = [], {}
    for arch in s.archs:
        stock = build_model(arch, s)
        # copied before the stock model trains: both start from the same weights
        twins = {False: stock, True: log_linear_twin(stock, s)}
        for log_linear, model in twins.items():
            name = f"{ARCH_NAMES[arch]} ({'log-linear' if log_linear else 'stock'})"
            n_params = sum(p.numel() for p in model.parameters())
            refused = None if log_linear else fla_refuses_training(arch, s.device)
            if refused:
                rows.append({"name": name, "arch": arch, "log_linear": False, "parameters": n_params,
                             "skipped": refused})
                print(f"{name}: {refused}")
                continue
            training = train_model(model, train, s, desc=name, progress=progress)
            losses, seconds = training.losses, training.seconds
            test_loss, acc = evaluate(model, test, s)
            tail = losses[-min(10, len(losses)):]
            rows.append({
                "name": name,
                "arch": arch,
                "log_linear": log_linear,
                "parameters": n_params,
                "final_loss": sum(tail) / len(tail),
                "test_loss": test_loss,
                "accuracy": acc,
                "losses": losses,
                "timing": {"train_seconds": seconds, "steps_per_second": s.steps / seconds,
                           "ms_per_step": training.ms_per_step},
            })
            if log_linear:
                models[arch] = (name, model)
            if not progress:
                print(f"{name}: loss {rows[-1]['final_loss']:.3f}, recall {acc:.1%} ({s.steps / seconds:.1f} steps/s)")

    _print_table(rows, chance)
    gen_name, gen_model = next(iter(models.values()))
    gen = generate_example(gen_model, test, s)
    gen["model"] = gen_name
    _print_generate(gen_name, gen)

    result = {
        "task": {"name": "mqar", "seq_len": s.seq_len, "kv_pairs": s.kv_pairs, "vocab_size": s.vocab_size,
                 "num_train": len(train), "num_test": len(test), "chance_accuracy": chance},
        "settings": asdict(s),
        "versions": {"torch": torch.__version__, "fla": fla.__version__, "transformers": transformers.__version__},
        "models": rows,
        "generate": gen,
        "timing": {"total_seconds": time.perf_counter() - wall},
    }
    result["settings"]["archs"] = list(s.archs)
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        wrote_png = _plot(rows, out / "loss_curves.png")
        print(f"\nwrote {out / 'results.json'}" + (f" and {out / 'loss_curves.png'}" if wrote_png else ""))
    print(f"total time {result['timing']['total_seconds']:.0f} s")
    return result
