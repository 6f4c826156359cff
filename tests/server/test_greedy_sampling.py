"""Greedy requests are sampled by an argmax over the logits row instead of llama.cpp's sampler
chain (which copies the whole vocabulary per token): it must pick what the chain picks."""

from __future__ import annotations

import ctypes
import json

import aiohttp
import llama_cpp as L
import numpy as np
import pytest

from abi_tui.backends.base import SamplingParams
from abi_tui.backends.llamacpp import argmax_with_bias, greedy_biases

JSON = {"Content-Type": "application/json"}


def chain_pick(logits: np.ndarray, bias: dict[int, float]) -> int:
    """What llama.cpp's logit-bias + greedy chain selects from these logits."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    try:
        if bias:
            entries = (L.llama_logit_bias * len(bias))()
            for i, (token, value) in enumerate(bias.items()):
                entries[i].token, entries[i].bias = token, value
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(len(logits), len(bias), entries))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        data = (L.llama_token_data * len(logits))()
        for i, logit in enumerate(logits):
            data[i].id, data[i].logit, data[i].p = i, float(logit), 0.0
        candidates = L.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
        L.llama_sampler_apply(chain, ctypes.pointer(candidates))
        return data[candidates.selected].id
    finally:
        L.llama_sampler_free(chain)


@pytest.mark.parametrize("seed", range(40))
def test_the_argmax_picks_what_llama_cpps_greedy_chain_picks(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, 500).astype(np.float32)
    logits[rng.integers(0, 500, 5)] = logits.max()  # ties: both take the first
    top = int(logits.argmax())
    bias = {top: float("-inf")} if seed % 3 == 0 else {}
    for token in rng.integers(0, 500, int(rng.integers(0, 4))):
        bias[int(token)] = float(rng.choice([-100.0, -1.5, 0.5, 2.0, 100.0]))
    before = logits.copy()
    tokens, biases = greedy_biases(SamplingParams(temperature=0, logit_bias=bias))
    assert argmax_with_bias(logits, tokens, biases) == chain_pick(before, bias)
    assert np.array_equal(logits, before)  # the row is restored: logprobs read it afterwards


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7), SamplingParams(temperature=0, repeat_penalty=1.1),
    SamplingParams(temperature=0, frequency_penalty=0.5), SamplingParams(temperature=0, presence_penalty=0.5),
    SamplingParams(temperature=0, dry_multiplier=0.8)])
def test_anything_but_plain_greedy_keeps_llama_cpps_chain(params):
    assert greedy_biases(params) is None


async def complete(session, **body):
    payload = {"prompt": "the quick brown fox", "max_tokens": 24, "temperature": 0, **body}
    async with session.post("/v1/completions", headers=JSON, data=json.dumps(payload)) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["choices"][0]["text"]


async def test_greedy_answers_with_logit_bias_match_the_sampler_chain(app_server, tiny_model, monkeypatch):
    """Through the API: the tiny model's tokens are its bytes, so a bias names a character."""
    server = await app_server(model=str(tiny_model), parallel=2, threads=1)
    chain_samples = []
    sample = L.llama_sampler_sample
    monkeypatch.setattr(L, "llama_sampler_sample", lambda *args: chain_samples.append(1) or sample(*args))
    async with aiohttp.ClientSession(server.url) as session:
        plain = await complete(session)
        banned = await complete(session, logit_bias={str(ord(plain[0])): -100})
        forced = await complete(session, logit_bias={str(ord("Q")): 100})
        assert not chain_samples  # the argmax sampled all three
        # A penalty too small to change any choice sends the same request through the chain.
        chained = await complete(session, logit_bias={str(ord(plain[0])): -100}, frequency_penalty=1e-6)
        assert len(chain_samples) == 24
    assert banned[0] != plain[0] and plain[0] not in banned
    assert forced == "Q" * 24
    assert banned == chained
