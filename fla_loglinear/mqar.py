"""Multi-query associative recall (MQAR), the synthetic recall task of the Zoology benchmark.

A sequence first lists ``num_kv_pairs`` key-value pairs ``k_1 v_1 ... k_D v_D`` (distinct
keys), then, in the rest of the sequence, asks for every key once, in a random order and
at random places: a query is the key followed by its value.  The model is scored on the
token it predicts right after each query key, which can only be right if it recalls the
pair from the start of the sequence.  Every other position holds the filler token 0 and
is not scored.

Vocabulary: ``0`` is the filler, keys are ``[1, 1 + num_keys)`` and values the rest, so a
value can never be mistaken for a key.  Generation uses its own ``torch.Generator``: the
same arguments and seed give the same tensors on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MQARBatch", "IGNORE_INDEX", "FILLER", "make_mqar", "mqar_splits", "vocab_layout"]

IGNORE_INDEX = -100
FILLER = 0


@dataclass
class MQARBatch:
    """``inputs [N, T]`` token ids; ``targets [N, T]``: the value due after each query key, ``-100`` elsewhere."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device) -> "MQARBatch":
        return MQARBatch(self.inputs.to(device), self.targets.to(device))

    def __getitem__(self, idx) -> "MQARBatch":
        return MQARBatch(self.inputs[idx], self.targets[idx])

    @property
    def query_mask(self) -> torch.Tensor:
        return self.targets != IGNORE_INDEX


def vocab_layout(vocab_size: int) -> tuple[range, range]:
    """The key and value token ranges of a vocabulary of ``vocab_size`` tokens (filler 0 excluded)."""
    if vocab_size < 3:
        raise ValueError(f"MQAR needs vocab_size >= 3 (filler, keys, values), got {vocab_size}")
    num_keys = (vocab_size - 1) // 2
    return range(1, 1 + num_keys), range(1 + num_keys, vocab_size)


def make_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    seed: int,
) -> MQARBatch:
    """Generate ``num_examples`` MQAR sequences of ``seq_len`` tokens.

    Args:
        num_examples: number of sequences ``N``.
        seq_len: tokens per sequence ``T``; needs ``T >= 4 * num_kv_pairs`` (pairs plus one query pair per key).
        num_kv_pairs: key-value pairs ``D`` per sequence, each key queried once.
        vocab_size: total vocabulary, filler included; needs at least ``D`` keys.
        seed: seed of the generator; the output depends on nothing else.

    Returns:
        :class:`MQARBatch` with ``inputs`` and ``targets`` of shape ``[N, T]`` (int64).
    """
    keys, values = vocab_layout(vocab_size)
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if num_kv_pairs < 1:
        raise ValueError(f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    if num_kv_pairs > len(keys):
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs that many distinct keys; vocab_size={vocab_size} has {len(keys)}")
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(f"seq_len must be >= 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}")

    gen = torch.Generator().manual_seed(seed)
    N, D, T = num_examples, num_kv_pairs, seq_len
    rows = torch.arange(N).unsqueeze(1)

    key_ids = torch.rand(N, len(keys), generator=gen).argsort(dim=1)[:, :D] + keys.start
    value_ids = torch.randint(values.start, values.stop, (N, D), generator=gen)

    inputs = torch.full((N, T), FILLER, dtype=torch.int64)
    targets = torch.full((N, T), IGNORE_INDEX, dtype=torch.int64)
    inputs[:, 0:2 * D:2] = key_ids
    inputs[:, 1:2 * D:2] = value_ids

    # Queries sit on two-token slots after the pairs; pick D of them, keep them in order, and
    # ask the keys in a random order so the answer order never mirrors the listing order.
    num_slots = (T - 2 * D) // 2
    slots = torch.rand(N, num_slots, generator=gen).argsort(dim=1)[:, :D].sort(dim=1).values
    query_pos = 2 * D + 2 * slots
    order = torch.rand(N, D, generator=gen).argsort(dim=1)
    inputs[rows, query_pos] = key_ids.gather(1, order)
    inputs[rows, query_pos + 1] = value_ids.gather(1, order)
    targets[rows, query_pos] = value_ids.gather(1, order)
    return MQARBatch(inputs, targets)


def mqar_splits(
    num_train: int,
    num_test: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    seed: int,
) -> tuple[MQARBatch, MQARBatch]:
    """A training set and a held-out set drawn from disjoint generator seeds (``2 * seed`` and ``2 * seed + 1``)."""
    train = make_mqar(num_train, seq_len, num_kv_pairs, vocab_size, seed=2 * seed)
    test = make_mqar(num_test, seq_len, num_kv_pairs, vocab_size, seed=2 * seed + 1)
    return train, test
