"""Cached decoding and generate() of the patched log-linear models (CPU, transformers' generate loop)."""
from __future__ import annotations

import copy

import pytest
import torch

import fla_loglinear.patches as patches
from fla_loglinear import FenwickState
from tests.layers.tiny_models import VOCAB, randomize_lambdas, tiny_config

FAMILIES = ["gdn", "mamba2"]


@pytest.fixture(scope="module", autouse=True)
def patched():
    was = patches.is_patched()
    patches.patch(cpu=True)
    yield
    if not was:
        patches.unpatch()


_MODELS = {}


def model_for(family: str):
    """A tiny log-linear model with non-trivial lambdas (built once per family)."""
    from transformers import AutoModelForCausalLM

    if family not in _MODELS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(family, log_linear=True, log_linear_levels=4)).eval()
        randomize_lambdas(model, std=0.8)
        _MODELS[family] = model
    return _MODELS[family]


def prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy_reference(model, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy continuation and per-step logits recomputed by full forwards (no cache)."""
    logits = []
    with torch.no_grad():
        for _ in range(steps):
            last = model(ids, use_cache=False).logits[:, -1]
            logits.append(last)
            ids = torch.cat([ids, last.argmax(-1, keepdim=True)], 1)
    return ids, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_single_steps_equal_full_forward(family):
    model = model_for(family)
    ids = prompt(2, 21)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :13], use_cache=True)
        cache, pieces = out.past_key_values, [out.logits]
        for t in range(13, 21):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)
    state = cache[0]["recurrent_state"]
    assert isinstance(state, FenwickState) and state.positions.tolist() == [21, 21]


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_keyword_of_transformers_5_is_read(family):
    """generate() in transformers 5.24 passes cache=, which fla 0.6's forward ignores on its own."""
    model = model_for(family)
    ids = prompt(1, 10)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        cache = model(ids[:, :9], use_cache=True).past_key_values
        step = model(input_ids=ids[:, 9:], cache=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_equals_one_prefill(family):
    model = model_for(family)
    ids = prompt(2, 30, seed=1)
    with torch.no_grad():
        one = model(ids[:, :27], use_cache=True)
        cache, pieces = None, []
        for a, b in [(0, 9), (9, 20), (20, 27)]:
            out = model(ids[:, a:b], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
        torch.testing.assert_close(torch.cat(pieces, 1), one.logits, rtol=1e-4, atol=1e-5)
        # and decoding goes on identically from either cache
        a = model(ids[:, 27:28], past_key_values=one.past_key_values, use_cache=True).logits
        b = model(ids[:, 27:28], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_argmax_of_full_forwards(family):
    model = model_for(family)
    ids = prompt(2, 9, seed=2)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    ref_ids, ref_logits = greedy_reference(model, ids, 6)
    assert torch.equal(out.sequences, ref_ids)
    # the logits too: a decoder restarting from an empty state could still pick the same tokens
    torch.testing.assert_close(torch.stack(out.logits, 1), torch.stack(ref_logits, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_each_sequence_alone(family):
    model = model_for(family)
    long, short = prompt(1, 11, seed=3), prompt(1, 5, seed=4)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1)])
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    kw = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
              return_dict_in_generate=True)
    batched = model.generate(ids, attention_mask=mask, **kw)
    for row, alone in enumerate((long, short)):
        single = model.generate(alone, attention_mask=torch.ones_like(alone), **kw)
        assert torch.equal(batched.sequences[row, -5:], single.sequences[0, -5:])
        torch.testing.assert_close(torch.stack(batched.logits, 1)[row], torch.stack(single.logits, 1)[0],
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_scores_match_full_forward(family):
    """Beam search reorders the FenwickState; each returned beam's score is its true log-probability."""
    model = model_for(family)
    ids = prompt(1, 8, seed=5)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, num_beams=3,
                         num_return_sequences=3, do_sample=False, eos_token_id=None, pad_token_id=0,
                         length_penalty=0.0, output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape == (3, 12)
    with torch.no_grad():
        logp = model(out.sequences, use_cache=False).logits.log_softmax(-1)
    new = out.sequences[:, 8:]
    true = logp[:, 7:-1].gather(-1, new[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, true, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (Triton kernels)")
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_cached_decoding_and_generate(family):
    model = copy.deepcopy(model_for(family)).cuda()
    ids = prompt(2, 150, seed=6).cuda()  # crosses several 64-token chunks
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :131], use_cache=True)
        cache, pieces = out.past_key_values, [out.logits]
        for t in range(131, 150):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=2e-3, atol=2e-3)
    gen = model.generate(ids[:, :100], attention_mask=torch.ones_like(ids[:, :100]), max_new_tokens=5,
                         do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    with torch.no_grad():
        ref_all = model(gen.sequences, use_cache=False).logits[:, 99:-1]
    torch.testing.assert_close(torch.stack(gen.logits, 1), ref_all, rtol=2e-3, atol=2e-3)
