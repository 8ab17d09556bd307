"""The training part of ``bench`` on the CPU at toy size: its variants, table, profile and per-block compile
(the GPU numbers are the lead's run)."""
from __future__ import annotations

import torch

from fla_loglinear import bench
from fla_loglinear.levels import num_levels

TINY = {"gdn": dict(hidden_size=32, num_hidden_layers=1, num_heads=2, head_dim=16, vocab_size=64),
        "mamba2": dict(hidden_size=32, num_hidden_layers=1, head_dim=16, state_size=16, chunk_size=16, vocab_size=64)}


def test_training_rows_table_and_profile(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "TOKENS_PER_STEP", 64)
    monkeypatch.setattr(bench, "SIZES", TINY)
    rows = bench.bench_training([16, 32], device="cpu", profile_dir=tmp_path, dtype=torch.float32)
    assert [(r["name"], r["seq_len"]) for r in rows] == [(v[0], T) for v in bench.TRAIN_VARIANTS for T in (16, 32)]
    for r in rows:
        assert r["tokens_per_second"] > 0, r
        assert r["batch_size"] == 64 // r["seq_len"]
        assert r["levels"] == (num_levels(r["seq_len"]) if r["log_linear"] else None)
    table = bench.train_table(rows, note="a note")
    assert table.count("\n| ") == len(rows) and "a note" in table
    ratio = next(line for line in table.splitlines() if line.startswith("| Gated DeltaNet (log-linear) | 32 "))
    assert ratio.split("|")[6].strip().endswith("x")
    # the middle length of the log-linear Gated DeltaNet rows
    text = (tmp_path / "profile_gdn_loglinear_T32.txt").read_text()
    assert "top ops by cpu_time_total" in text and "host synchronisations" in text


def test_frozen_lambdas_and_compiled_blocks():
    cfg = bench.model_config("mamba2", True, 4, **TINY["mamba2"])
    model = bench._build(cfg, "cpu", torch.float32)
    assert bench.freeze_lambdas(model) == 2  # weight, level_scale (the default paper form, one layer)
    assert all(p.requires_grad == (".level_proj." not in n) for n, p in model.named_parameters())
    bench.compile_blocks(model)
    assert all(b._compiled_call_impl is not None for b in model.backbone.layers)
