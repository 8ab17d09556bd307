"""FSDP2 (``fully_shard`` per block, as flame shards) on two gloo ranks trains both log-linear models like
one process does on the same global batch."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

import fla_loglinear.patches as patches
from tests.layers.tiny_models import VOCAB, cpu_patched, randomize_lambdas, tiny_config

FAMILIES = ("gdn", "mamba2")
WORLD = 2
STEPS = 4
B, T = 4, 32  # global batch: each rank takes B // WORLD sequences


def build(family: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, log_linear=True, log_linear_levels=4))
    randomize_lambdas(model)
    return model


def batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (B, T), generator=gen) for _ in range(STEPS)]


def train(model, data, reduce=None) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.detach()
        losses.append(float(reduce(loss) if reduce else loss))
    return losses


def _rank(rank: int, init: str, out: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        patches.patch(cpu=True)
        result = {}
        for family in FAMILIES:
            model = build(family)
            base = getattr(model, "model", None) or model.backbone
            for block in base.layers:
                fully_shard(block)
            fully_shard(model)
            share = B // WORLD
            data = [ids[rank * share:(rank + 1) * share] for ids in batches()]

            def mean_over_ranks(loss):
                dist.all_reduce(loss)
                return loss / WORLD

            result[family] = train(model, data, mean_over_ranks)
        out[rank] = result
    finally:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def patched():
    with cpu_patched():
        yield


def test_fully_shard_per_block_on_two_ranks_equals_one_process(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=WORLD, join=True)
        out = dict(out)
    assert out[0] == out[1]  # every rank saw the same mean loss
    for family in FAMILIES:
        single = train(build(family), batches())
        # the sequences are equally long, so the mean of the ranks' mean losses is the global mean
        assert out[0][family] == pytest.approx(single, rel=1e-5, abs=1e-6), family
        # the updates matter: without them the later losses differ
        with torch.no_grad():
            model = build(family)
            untrained = [float(model(input_ids=ids, labels=ids).loss) for ids in batches()]
        assert min(abs(a - b) for a, b in zip(single[1:], untrained[1:])) > 1e-3, family
