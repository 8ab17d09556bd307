"""The MQAR sweep's plumbing on the CPU: plan, shards, parents, a tiny sweep end to end, merge, report."""
from __future__ import annotations

import json

import pytest
import torch

import fla_loglinear.demo as demo
import fla_loglinear.mqar_sweep as sweep
from fla_loglinear.__main__ import main

TINY = sweep.PRESETS["cpu-tiny"]


def test_plan_covers_the_grid_once_in_priority_order():
    g = sweep.SweepGrid(archs=("gdn", "mamba2"), widths=(32, 64, 128), kv_pairs=(16,), lrs=(1e-3, 3e-3, 1e-2),
                        seeds=(0, 1), seed_widths=(32,), form_widths=(32,), form_variants=("paper", "paper-random"))
    runs = sweep.plan(g)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    main_seed0 = 2 * 3 * 3 * 2          # archs x widths x lrs x (parent, log-linear)
    more_seeds = 2 * 1 * 3 * 2          # seed 1 at width 32
    forms = 2 * 1 * 3 * 2 * 2           # archs x form width x lrs x forms x seeds
    assert len(runs) == main_seed0 + more_seeds + forms
    assert {r.variant for r in runs[:main_seed0]} == {"parent", "log-linear"} and {r.seed for r in runs[:main_seed0]} == {0}
    assert all(r.width == 32 for r in runs[main_seed0:])
    # every log-linear point has its parent at equal settings
    for r in runs:
        if r.variant != "parent" and r.variant == "log-linear":
            assert sweep.Run(**{**r.__dict__, "variant": "parent"}) in runs


def test_shards_partition_the_plan_and_keep_a_setting_together():
    runs = sweep.plan(sweep.PRESETS["full"])
    parts = [sweep.shard(runs, i, 3) for i in (1, 2, 3)]
    assert sorted(r.key for p in parts for r in p) == sorted(r.key for r in runs)
    assert max(map(len, parts)) - min(map(len, parts)) <= 3
    for p in parts:
        for r in p:
            if r.variant == "log-linear":
                assert sweep.Run(**{**r.__dict__, "variant": "parent"}) in p
    with pytest.raises(ValueError, match="1 <= i <= n"):
        sweep.shard(runs, 3, 2)


def test_full_preset_fits_the_stated_budget():
    runs = sweep.plan(sweep.PRESETS["full"])
    assert {r.seq_len for r in runs} == {256} and {r.vocab_size for r in runs} == {256}
    assert len({r.lr for r in runs}) >= 3 and {r.variant for r in runs} == set(sweep.VARIANTS) - {"lowrank-random"}
    # the comment's budget: ~12 minutes of training with 12 workers at 100 ms per step
    assert sweep.estimate_seconds(runs, 100.0, 12) <= 12 * 60


@pytest.mark.parametrize("refused", [False, True])
def test_parent_kind_follows_fla_and_the_frozen_parent_is_the_parents_function(monkeypatch, refused):
    monkeypatch.setattr(demo, "fla_refuses_training", lambda arch, device: "refused" if refused else None)
    run = sweep.Run("gdn", "parent", 16, 4, 1e-3, 0, steps=2, batch_size=2, seq_len=32, vocab_size=64, num_test=4)
    model, kind = sweep.build(run, "cpu")
    assert kind == ("frozen-lambda" if refused else "fla-stock")
    assert model.config.log_linear is refused
    stock, _ = sweep.build(sweep.Run(**{**run.__dict__, "variant": "log-linear"}), "cpu")
    frozen = [p for n, p in model.named_parameters() if "level_proj" in n]
    assert bool(frozen) is refused and not any(p.requires_grad for p in frozen)
    x = torch.randint(1, 64, (2, 32))
    monkeypatch.setattr(demo, "fla_refuses_training", lambda arch, device: None)
    parent, _ = sweep.build(run, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, parent(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    # trained, the frozen lambdas stay exactly 1 and the rest of the model learns
    if refused:
        before = {n: p.clone() for n, p in model.named_parameters()}
        train, _ = demo.mqar_splits(8, 4, 32, 4, 64, 0)
        demo.train_model(model, train, sweep._settings(run, "cpu"), progress=False)
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]) == ("level_proj" in n), n


def test_tiny_sweep_end_to_end_then_merge(tmp_path, capsys, monkeypatch):
    # the GDN parent through the frozen-lambda path, as on a Hopper GPU with triton < 3.7.1
    monkeypatch.setattr(demo, "fla_refuses_training", lambda arch, device: "refused" if arch == "gdn" else None)
    outs = []
    for i in (1, 2):
        out = tmp_path / f"shard{i}.json"
        assert main(["mqar", "--preset", "cpu-tiny", "--device", "cpu", "--shard", f"{i}/2", "--output", str(out)]) == 0
        outs.append(out)
    merged = tmp_path / "merged.json"
    assert main(["mqar", "--merge", *map(str, outs), "--output", str(merged)]) == 0
    report = json.loads(merged.read_text())
    assert sorted(r["key"] for r in report["runs"]) == sorted(r.key for r in sweep.plan(TINY))
    assert len(report["meta"]) == 2 and all(m["device"] == "cpu" and "torch" in m["versions"] for m in report["meta"])
    for r in report["runs"]:
        assert "error" not in r, r.get("traceback")
        assert 0.0 <= r["accuracy"] <= 1.0 and r["ms_per_step"] > 0 and r["steps_per_second"] > 0
        assert r["loss_curve"][-1][0] == TINY.steps and all(loss > 0 for _, loss in r["loss_curve"])
        assert r["parent_kind"] == ({"gdn": "frozen-lambda", "mamba2": "fla-stock"}[r["arch"]]
                                    if r["variant"] == "parent" else None)
    table = merged.with_suffix(".md").read_text()
    assert "Gated DeltaNet = frozen-lambda" in table and "Mamba-2 = fla-stock" in table
    assert table.count("| Gated DeltaNet |") == 1 and "n=2" in table
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert merged.with_suffix(".png").stat().st_size > 1000
    # the same runs again (one process, same seeds) give the same numbers
    again = tmp_path / "again.json"
    assert main(["mqar", "--preset", "cpu-tiny", "--device", "cpu", "--shard", "1/2", "--output", str(again)]) == 0
    first = {r["key"]: r for r in json.loads(outs[0].read_text())["runs"]}
    for r in json.loads(again.read_text())["runs"]:
        assert (r["accuracy"], r["loss_curve"]) == (first[r["key"]]["accuracy"], first[r["key"]]["loss_curve"])
    # --resume keeps shard 1's results as they were and runs only the rest of the grid
    resumed = tmp_path / "resumed.json"
    assert main(["mqar", "--preset", "cpu-tiny", "--device", "cpu", "--resume", str(outs[0]),
                 "--output", str(resumed)]) == 0
    report = json.loads(resumed.read_text())
    assert sorted(r["key"] for r in report["runs"]) == sorted(r.key for r in sweep.plan(TINY))
    assert report["meta"][0]["resumed_runs"] == len(first) and report["meta"][0]["planned_runs"] == len(
        sweep.plan(TINY)) - len(first)
    for r in report["runs"]:
        if r["key"] in first:
            assert r == first[r["key"]]


def test_merge_prefers_finished_runs_and_summary_picks_the_best_lr(tmp_path):
    def row(lr, seed, acc, variant="log-linear"):
        r = sweep.Run("gdn", variant, 32, 16, lr, seed, 10, 4, 64, 64, 8)
        return {"key": r.key, **r.__dict__, "accuracy": acc, "ms_per_step": 2.0, "parent_kind": None}

    a = {"meta": [{"device": "x"}], "runs": [row(1e-3, 0, 0.5), row(1e-3, 1, 0.7), row(1e-2, 0, 0.9),
                                              {**row(1e-2, 1, 0.0), "accuracy": None}]}
    a["runs"][-1].pop("accuracy")
    a["runs"][-1]["skipped"] = "deadline"
    b = {"meta": [{"device": "y"}], "runs": [row(1e-2, 1, 0.1)]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    merged = sweep.merge([tmp_path / "a.json", tmp_path / "b.json"])
    assert len(merged["runs"]) == 4 and all("accuracy" in r for r in merged["runs"])
    (best,) = sweep.summarize(merged["runs"])
    # lr 1e-3: mean 0.6; lr 1e-2: mean 0.5 -> 1e-3, although 1e-2 has the single best run
    assert best["best_lr"] == 1e-3 and best["accuracy"] == pytest.approx(0.6) and best["seeds"] == [0, 1]
    assert (best["accuracy_min"], best["accuracy_max"]) == (0.5, 0.7)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a sweep JSON"):
        sweep.merge([tmp_path / "bad.json"])


def test_a_failing_run_is_recorded_and_the_deadline_skips(tmp_path, monkeypatch):
    def boom(run, device):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sweep, "build", boom)
    runs = sweep.plan(TINY)[:2]
    report = sweep.run_sweep(runs, tmp_path / "r.json", "cpu")
    assert all("RuntimeError: kernel exploded" in r["error"] for r in report["runs"])
    clock = iter(range(0, 10 ** 6, 10))  # every reading 10 s later: no run fits a 5 s deadline
    monkeypatch.setattr(sweep.time, "time", lambda: float(next(clock)))
    report = sweep.run_sweep(runs, tmp_path / "s.json", "cpu", deadline_s=5)
    assert all(r["skipped"].startswith("deadline") and "accuracy" not in r for r in report["runs"])
    assert "2 run(s) without a result" in (tmp_path / "s.md").read_text()


def test_worker_processes(tmp_path):
    """The spawn pool the GPU sweep uses: results come back from the workers and are the in-process ones."""
    args = ["mqar", "--preset", "cpu-tiny", "--device", "cpu", "--archs", "mamba2", "--seeds", "0"]
    assert main([*args, "--workers", "2", "--output", str(tmp_path / "pool.json")]) == 0
    assert main([*args, "--output", str(tmp_path / "one.json")]) == 0
    pool, one = ({r["key"]: r for r in json.loads((tmp_path / f"{n}.json").read_text())["runs"]} for n in ("pool", "one"))
    assert pool.keys() == one.keys() and len(pool) == 3
    assert json.loads((tmp_path / "pool.json").read_text())["meta"][0]["workers"] == 2
    for key, r in pool.items():
        assert (r["accuracy"], r["loss_curve"]) == (one[key]["accuracy"], one[key]["loss_curve"]), key


def test_the_deadline_estimates_a_run_from_runs_of_its_own_model_and_shape(monkeypatch):
    runs = sweep.plan(TINY)
    gdn = next(r for r in runs if r.arch == "gdn" and r.variant == "log-linear")
    paper = next(r for r in runs if r.arch == "gdn" and r.variant == "paper-random")
    mamba = next(r for r in runs if r.arch == "mamba2")
    monkeypatch.setattr(sweep.time, "time", lambda: 100.0)
    took = {sweep._cost_key(gdn): 50.0}
    assert sweep._too_late(gdn, took, 130.0) and sweep._too_late(paper, took, 130.0)  # same model, other lambdas
    assert not sweep._too_late(mamba, took, 130.0)      # never measured: it starts
    assert not sweep._too_late(gdn, took, 200.0)
    assert sweep._too_late(mamba, took, 100.0)          # at the deadline nothing starts
    assert not sweep._too_late(gdn, took, None)


def test_warmup_covers_every_compiled_shape_once_with_short_runs():
    runs = sweep.plan(sweep.PRESETS["full"])
    warm = sweep.warmup_runs(runs)
    shapes = {(r.arch, sweep.VARIANTS[r.variant][0], r.width, r.seq_len, r.batch_size) for r in runs}
    assert len(warm) == len(shapes)
    assert {(r.arch, sweep.VARIANTS[r.variant][0], r.width, r.seq_len, r.batch_size) for r in warm} == shapes
    assert all(r.steps == 2 and r.num_test == 128 for r in warm)
