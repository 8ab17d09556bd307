"""Properties of the MQAR generator, checked by brute force on the generated tokens."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fla_loglinear.mqar import FILLER, IGNORE_INDEX, make_mqar, mqar_splits, vocab_layout


def check_sequence(inputs: list[int], targets: list[int], D: int, vocab_size: int) -> None:
    """Every rule of one MQAR sequence, re-derived from the tokens with plain Python."""
    keys, values = vocab_layout(vocab_size)
    T = len(inputs)
    assert len(targets) == T
    pairs = {}
    for i in range(D):
        key, value = inputs[2 * i], inputs[2 * i + 1]
        assert key in keys and value in values
        assert key not in pairs, "keys of one sequence must be distinct"
        pairs[key] = value
    queried = []
    for t in range(2 * D, T):
        if targets[t] == IGNORE_INDEX:
            continue
        key = inputs[t]
        # the answer is the value written right after the same key earlier in the sequence
        earlier = [s for s in range(0, t) if inputs[s] == key and s < 2 * D]
        assert len(earlier) == 1
        assert targets[t] == inputs[earlier[0] + 1]
        # the sequence itself continues with the answer, so a prompt cut after the key can be generated
        assert t + 1 < T and inputs[t + 1] == targets[t]
        queried.append(key)
    assert sorted(queried) == sorted(pairs), "every key is asked exactly once"
    assert all(targets[t] == IGNORE_INDEX for t in range(2 * D)), "the listing itself is not scored"
    answer_pos = {t + 1 for t in range(T) if targets[t] != IGNORE_INDEX}
    for t in range(2 * D, T):
        if targets[t] == IGNORE_INDEX and t not in answer_pos:
            assert inputs[t] == FILLER


def test_shapes_and_answers():
    N, T, D, V = 64, 64, 8, 64
    batch = make_mqar(N, T, D, V, seed=3)
    assert batch.inputs.shape == (N, T) and batch.targets.shape == (N, T)
    assert batch.inputs.dtype == torch.int64 and batch.targets.dtype == torch.int64
    assert int(batch.inputs.min()) >= 0 and int(batch.inputs.max()) < V
    assert (batch.query_mask.sum(1) == D).all()
    for n in range(N):
        check_sequence(batch.inputs[n].tolist(), batch.targets[n].tolist(), D, V)


def test_queries_are_shuffled_and_spread():
    batch = make_mqar(256, 128, 8, 64, seed=0)
    pos = batch.query_mask.nonzero()[:, 1].reshape(256, 8)
    # query slots vary between sequences (not one fixed layout)
    assert len({tuple(p.tolist()) for p in pos}) > 200
    # the ask order is not the listing order
    listing = batch.inputs[:, 0:16:2]
    asked = batch.inputs.gather(1, pos)
    assert (asked != listing).any(dim=1).float().mean() > 0.9


def test_seeded_determinism():
    a = make_mqar(16, 96, 6, 100, seed=7)
    b = make_mqar(16, 96, 6, 100, seed=7)
    c = make_mqar(16, 96, 6, 100, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_held_out_split_differs():
    train, test = mqar_splits(512, 128, 64, 8, 64, seed=0)
    assert len(train) == 512 and len(test) == 128
    train_rows = {tuple(r) for r in train.inputs.tolist()}
    assert not any(tuple(r) in train_rows for r in test.inputs.tolist())
    train2, test2 = mqar_splits(512, 128, 64, 8, 64, seed=0)
    assert torch.equal(train.inputs, train2.inputs) and torch.equal(test.inputs, test2.inputs)
    _, test_other = mqar_splits(512, 128, 64, 8, 64, seed=1)
    assert not torch.equal(test.inputs, test_other.inputs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0, seq_len=64, num_kv_pairs=4, vocab_size=64), "num_examples"),
        (dict(num_examples=2, seq_len=15, num_kv_pairs=4, vocab_size=64), "seq_len"),
        (dict(num_examples=2, seq_len=64, num_kv_pairs=0, vocab_size=64), "num_kv_pairs"),
        (dict(num_examples=2, seq_len=400, num_kv_pairs=40, vocab_size=64), "distinct keys"),
        (dict(num_examples=2, seq_len=64, num_kv_pairs=1, vocab_size=2), "vocab_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_mqar(seed=0, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    N=st.integers(1, 4),
    D=st.integers(1, 10),
    extra=st.integers(0, 40),
    V=st.integers(3, 80),
    seed=st.integers(0, 2**31),
)
def test_property_any_shape(N, D, extra, V, seed):
    D = min(D, len(vocab_layout(V)[0]))
    T = 4 * D + extra
    batch = make_mqar(N, T, D, V, seed=seed)
    for n in range(N):
        check_sequence(batch.inputs[n].tolist(), batch.targets[n].tolist(), D, V)
