"""The command line: flag errors, `bench` without a GPU, and tiny `demo` runs end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fla_loglinear.demo as demo
from fla_loglinear.__main__ import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "4", "--seq-len", "32", "--batch-size", "4", "--kv-pairs", "4", "--device", "cpu", "--no-progress"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "fla_loglinear", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required"),
        (["demo", "--model", "transformer"], "invalid choice"),
        (["demo", "--steps", "0"], "positive integer"),
        (["demo", "--seq-len", "-5"], "positive integer"),
        (["demo", "--seq-len", "abc"], "positive integer"),
        (["demo", "--batch-size", "0"], "positive integer"),
        (["demo", "--seq-len", "16", "--kv-pairs", "8"], "too short"),
        (["demo", "--device", "tpu"], "device"),
        (["demo", "--unknown-flag"], "unrecognized arguments"),
        (["bench", "--parts", "kernels,foo"], "foo"),
        (["bench", "--archs", "gdn,rwkv"], "--archs"),
        (["bench", "--seq-lens", "2048,0"], "--seq-lens"),
        (["mqar", "--preset", "huge"], "invalid choice"),
        (["mqar", "--workers", "0"], "positive integer"),
        (["mqar", "--shard", "3/2", "--list"], "--shard"),
        (["mqar", "--shard", "a/b", "--list"], "--shard"),
        (["mqar", "--widths", "32,x", "--list"], "--widths"),
        (["mqar", "--lrs", "0.001,-1", "--list"], "--lrs"),
        (["mqar", "--seeds", "-1", "--list"], "--seeds"),
        (["mqar", "--archs", "gdn,rwkv", "--list"], "rwkv"),
        (["mqar", "--kv-pairs", "128", "--list"], "too short"),
        (["mqar", "--vocab-size", "16", "--list"], "keys of vocabulary"),
        (["mqar", "--merge", "/nonexistent.json"], "--merge"),
        (["mqar", "--resume", "/nonexistent.json"], "--resume"),
        (["mqar", "--forms", "lowrank,bogus", "--list"], "--forms"),
    ],
)
def test_bad_flags_exit_2_with_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err


def test_every_sweep_preset_is_a_cli_choice(capsys):
    import fla_loglinear.mqar_sweep as sweep

    for name in sweep.PRESETS:
        assert main(["mqar", "--preset", name, "--list"]) == 0
        assert capsys.readouterr().out.strip().endswith("overlapping fully")


def test_forms_flag_selects_the_form_comparison(capsys):
    assert main(["mqar", "--preset", "cpu-tiny", "--forms", "lowrank,lowrank-random", "--list"]) == 0
    keys = capsys.readouterr().out.split()
    assert any("/lowrank-random/" in k for k in keys) and not any("/paper-random/" in k for k in keys)


def test_bad_flag_through_the_entry_point():
    proc = run_cli("demo", "--model", "rnn")
    assert proc.returncode == 2
    assert "invalid choice: 'rnn'" in proc.stderr


def test_bench_without_gpu_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err


def test_bench_writes_into_an_ignored_folder_by_default():
    """New runs land in a git-ignored folder; benchmarks/results/ holds only runs cited on purpose."""
    out = Path(build_parser().parse_args(["bench"]).output)
    assert Path("benchmarks/results") not in (out, *out.parents)
    ignored = [Path(line.strip().strip("/")) for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    assert any(p == out or p in out.parents for p in ignored), f"{out} is not in .gitignore"


class _StubLM(torch.nn.Module):
    """Stands in for a fla model to exercise the demo's plumbing without fla's kernels."""

    def __init__(self, vocab_size: int, width: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, width)
        self.rnn = torch.nn.GRU(width, width, batch_first=True)
        self.head = torch.nn.Linear(width, vocab_size)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.head(self.rnn(self.emb(input_ids))[0])})()

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, do_sample=False, use_cache=True):
        for _ in range(max_new_tokens):
            nxt = self(input_ids).logits[:, -1].argmax(-1, keepdim=True)
            input_ids = torch.cat([input_ids, nxt], dim=1)
        return input_ids


def _stub_build(arch, settings):
    torch.manual_seed(settings.seed)
    return _StubLM(settings.vocab_size, 8)


def _stub_twin(model, settings):
    torch.manual_seed(settings.seed + 2)
    return _StubLM(settings.vocab_size, 16)


def test_demo_plumbing_with_stub_models(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "build_model", _stub_build)
    monkeypatch.setattr(demo, "log_linear_twin", _stub_twin)
    results = []
    for run in range(2):
        assert main(["demo", *TINY, "--output", str(tmp_path / str(run))]) == 0
        results.append(json.loads((tmp_path / str(run) / "results.json").read_text()))
    a, b = results
    assert [m["name"] for m in a["models"]] == [
        "Gated DeltaNet (stock)", "Gated DeltaNet (log-linear)", "Mamba-2 (stock)", "Mamba-2 (log-linear)"
    ]
    for m in a["models"]:
        assert len(m["losses"]) == 4 and 0.0 <= m["accuracy"] <= 1.0
        stub = (_stub_twin if m["log_linear"] else lambda _, s: _stub_build("", s))(None, demo.DemoSettings())
        assert m["parameters"] == sum(p.numel() for p in stub.parameters())
    strip = lambda r: [{k: v for k, v in m.items() if k != "timing"} for m in r["models"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert a["generate"]["generated"] == b["generate"]["generated"]


def test_demo_skips_a_model_fla_refuses(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "build_model", _stub_build)
    monkeypatch.setattr(demo, "log_linear_twin", _stub_twin)
    monkeypatch.setattr(demo, "fla_refuses_training",
                        lambda arch, device: "not trained: refused" if arch == "gdn" else None)
    assert main(["demo", *TINY, "--output", str(tmp_path)]) == 0
    models = json.loads((tmp_path / "results.json").read_text())["models"]
    assert models[0]["name"] == "Gated DeltaNet (stock)" and models[0]["skipped"] == "not trained: refused"
    assert "losses" not in models[0] and all(len(m["losses"]) == 4 for m in models[1:])
    assert "not trained: refused" in capsys.readouterr().out


@pytest.mark.parametrize("hopper,above_371,arch,device,refused", [
    (True, False, "gdn", "cuda", True),
    (True, True, "gdn", "cuda", False),
    (False, False, "gdn", "cuda", False),
    (True, False, "mamba2", "cuda", False),
    (True, False, "gdn", "cpu", False),
])
def test_fla_refuses_training_follows_fla_flags(monkeypatch, hopper, above_371, arch, device, refused):
    import fla.ops.common.chunk_o as chunk_o

    monkeypatch.setattr(chunk_o, "IS_NVIDIA_HOPPER", hopper)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_4_0", True)
    monkeypatch.setattr(chunk_o, "TRITON_ABOVE_3_7_1", above_371)
    reason = demo.fla_refuses_training(arch, device)
    assert (reason is not None) == refused and (not refused or "triton" in reason)


def _check_results(res: dict, archs: list[str]) -> None:
    assert res["task"]["name"] == "mqar" and res["task"]["seq_len"] == 32 and res["task"]["kv_pairs"] == 4
    assert res["settings"]["archs"] == archs
    assert [(m["arch"], m["log_linear"]) for m in res["models"]] == [(a, ll) for a in archs for ll in (False, True)]
    for m in res["models"]:
        assert set(m) >= {"name", "parameters", "final_loss", "test_loss", "accuracy", "losses", "timing"}
        assert len(m["losses"]) == 4 and all(x == x and x > 0 for x in m["losses"])
        assert 0.0 <= m["accuracy"] <= 1.0 and m["parameters"] > 0
    # the log-linear twin is the stock model plus its lambda projection
    for stock, loglin in zip(res["models"][0::2], res["models"][1::2]):
        assert stock["parameters"] < loglin["parameters"]
    g = res["generate"]
    assert len(g["generated"]) == len(g["expected"]) >= 1 and "log-linear" in g["model"]


def test_tiny_demo_end_to_end_is_deterministic(tmp_path):
    """The real models through fla_loglinear.patch(), in fresh processes, twice with one seed."""
    runs = []
    for run in range(2):
        proc = run_cli("demo", *TINY, "--seed", "5", "--output", str(tmp_path / str(run)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "recall acc" in proc.stdout and "generate()" in proc.stdout
        runs.append(json.loads((tmp_path / str(run) / "results.json").read_text()))
    _check_results(runs[0], ["gdn", "mamba2"])
    strip = lambda r: [{k: v for k, v in m.items() if k != "timing"} for m in r["models"]]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])
    assert runs[0]["generate"] == runs[1]["generate"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (tmp_path / "0" / "loss_curves.png").exists()
    else:
        assert (tmp_path / "0" / "loss_curves.png").stat().st_size > 1000


def test_demo_trainings_repeat_in_one_process():
    """Two trainings of the real models with one seed, one after the other in this process: same numbers."""
    from fla_loglinear.mqar import mqar_splits

    s = demo.DemoSettings(seq_len=32, steps=3, batch_size=4, kv_pairs=4, hidden_size=32, num_test=8, seed=3)
    train, test = mqar_splits(s.num_train, s.num_test, s.seq_len, s.kv_pairs, s.vocab_size, s.seed)
    for arch in demo.ARCHS:
        runs = []
        for _ in range(2):
            stock = demo.build_model(arch, s)
            twin = demo.log_linear_twin(stock, s)
            runs.append([(demo.train_model(m, train, s, progress=False).losses, demo.evaluate(m, test, s))
                         for m in (stock, twin)])
        assert runs[0] == runs[1], arch
        assert runs[0][0][0] != runs[0][1][0]  # the stock model and its twin did train differently


@pytest.mark.parametrize("tty, interval", [(True, 0.5), (False, 5.0)])
def test_progress_bar_is_slow_off_a_terminal(monkeypatch, tty, interval):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty, raising=False)
    bar = demo.progress_bar(range(3), "x", progress=True)
    assert bar.mininterval == interval
    bar.close()


TINY_MODELS = {
    "gdn": dict(hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=16, vocab_size=64),
    "mamba2": dict(hidden_size=32, num_hidden_layers=1, head_dim=16, state_size=16, chunk_size=16, vocab_size=64),
}


@pytest.mark.parametrize("arch", ["gdn", "mamba2"])
def test_bench_measurements_on_tiny_models(arch):
    """bench's own measuring code, on the CPU at toy size (the GPU run is the lead's)."""
    from fla_loglinear import bench
    from fla_loglinear.levels import num_levels

    for log_linear in (False, True):
        cfg = bench.model_config(arch, log_linear, **TINY_MODELS[arch])
        r = bench.train_throughput(cfg, seq_len=32, batch_size=2, device="cpu", dtype=torch.float32, warmup=1, steps=1)
        assert r["tokens_per_second"] > 0 and r["parameters"] > 0
    sizes = {}
    for p in (5, 1000):
        L = num_levels(p + 1)
        cfg = bench.model_config(arch, True, L, **TINY_MODELS[arch])
        r = bench.decode_step(cfg, p, batch_size=2, device="cpu", dtype=torch.float32, warmup=1, steps=2)
        assert r["ms_per_token"] > 0
        sizes[p] = r["state_bytes_per_sequence"]
    # the recurrent state grows with the number of levels, not with the position
    H, K, V = (2, 16, 32) if arch == "gdn" else (4, 16, 16)  # GDN: expand_v 2; Mamba-2: heads = 2 * 32 / 16
    per_level = H * K * V * 4
    assert sizes[1000] - sizes[5] == (num_levels(1001) - num_levels(6)) * per_level
    stock = bench.decode_step(bench.model_config(arch, False, **TINY_MODELS[arch]), 1000, batch_size=2, device="cpu",
                              dtype=torch.float32, warmup=1, steps=1)
    assert stock["state_bytes_per_sequence"] < sizes[5]
    assert bench.kv_cache_bytes(1000, 768, 12) == 2 * 12 * 768 * 1000 * 2


def test_bench_rows_are_saved_one_by_one_and_failures_recorded(monkeypatch):
    """A report cut by a time limit keeps every row measured so far; a failing measurement is a row too."""
    from fla_loglinear import bench

    def fake_train(config, seq_len, batch_size, device="cuda", **options):
        if config.log_linear and seq_len == 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 GiB")
        return {"tokens_per_second": float(seq_len), "step_ms": 1.0}

    monkeypatch.setattr(bench, "train_throughput", fake_train)
    rows, saved = [], []
    bench.bench_training([32, 64], device="cpu", rows=rows, save=lambda: saved.append(len(rows)),
                         **TINY_MODELS["gdn"])
    assert saved == list(range(1, 2 * len(bench.TRAIN_VARIANTS) + 1))  # every variant x 2 lengths, saved after each
    failed = [r for r in rows if "error" in r]
    # the log-linear rows: GDN, Mamba-2 with frozen lambdas, Mamba-2
    assert [(r["arch"], r["seq_len"]) for r in failed] == [("gdn", 64), ("mamba2", 64), ("mamba2", 64)]
    assert all("OutOfMemoryError" in r["error"] and r["log_linear"] for r in failed)


@pytest.mark.parametrize("hopper", [True, False])
def test_bench_lifts_fla_hopper_guard_only_inside(monkeypatch, hopper):
    import fla.ops.common.chunk_o as chunk_o

    from fla_loglinear import bench

    monkeypatch.setattr(chunk_o, "IS_NVIDIA_HOPPER", hopper)
    with pytest.raises(KeyError), bench._fla_gated_backward_allowed() as note:
        assert chunk_o.IS_NVIDIA_HOPPER is False
        assert (note is not None) == hopper and (not hopper or "gradients are not" in note)
        raise KeyError("a failing measurement")
    assert chunk_o.IS_NVIDIA_HOPPER is hopper


@pytest.mark.parametrize("arch", ["gdn", "mamba2"])
def test_log_linear_twin_starts_from_the_stock_weights(arch):
    """The demo's comparison is fair: same weights, same logits at init, lambdas free of weight decay."""
    from fla_loglinear.mqar import make_mqar

    s = demo.DemoSettings(seq_len=32, kv_pairs=4, hidden_size=32, num_layers=1)
    stock = demo.build_model(arch, s)
    twin = demo.log_linear_twin(stock, s)
    assert not stock.config.log_linear and twin.config.log_linear
    stock_params = dict(stock.named_parameters())
    twin_params = dict(twin.named_parameters())
    lambda_names = {n for n in twin_params if "level_proj" in n}
    assert lambda_names and set(twin_params) - lambda_names == set(stock_params)
    for name, p in stock_params.items():
        assert p is not twin_params[name] and torch.equal(p, twin_params[name]), name
    x = make_mqar(3, 32, 4, s.vocab_size, seed=11).inputs
    with torch.no_grad():
        # the twin runs the log-linear op with lambda == 1, the stock model fla's own: equal to rounding
        torch.testing.assert_close(twin(input_ids=x).logits, stock(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    groups = demo._param_groups(twin, s)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] > 0 and decayed
    assert not any(id(twin_params[n]) in decayed for n in lambda_names)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in twin_params.values()}
    # rebuilding gives the same twin: the lambda projection's random part is seeded
    again = demo.log_linear_twin(demo.build_model(arch, s), s)
    for name, p in again.named_parameters():
        assert torch.equal(p, twin_params[name]), name
