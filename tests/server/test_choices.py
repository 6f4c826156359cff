"""`n` choices: one request, n answers decoded together, the prompt prefilled once."""

from __future__ import annotations

import pytest


@pytest.fixture
async def server(app_server, tiny_model):
    return await app_server(model=str(tiny_model), threads=1, n_ctx=1024, parallel=4)


def client_for(server):
    import openai

    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def backend_of(server):
    return server.state.engine.active_backend()


async def test_four_choices_share_one_prefill(server):
    client = client_for(server)
    backend = backend_of(server)
    prompt = [{"role": "user", "content": "a fairly long question that the four choices all share " * 3}]
    before = backend.stats()
    reply = await client.chat.completions.create(model="tiny", messages=prompt, n=4, max_tokens=16,
                                                 temperature=1.0, seed=11)
    after = backend.stats()
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" and len(c.message.content) == 16 for c in reply.choices)
    assert len({c.message.content for c in reply.choices}) > 1  # seeds 11..14: different samples
    n_prompt = reply.usage.prompt_tokens
    # Usage counts the prompt once and every choice's tokens.
    assert reply.usage.completion_tokens == 64 and reply.usage.total_tokens == n_prompt + 64
    # The prompt was decoded once; the other three copied its cells and decoded only the last
    # prompt token (for their own logits).
    prefilled = after["prompt_tokens_prefilled"] - before["prompt_tokens_prefilled"]
    assert prefilled == n_prompt + 3, (prefilled, n_prompt)
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] == 3 * (n_prompt - 1)


async def test_choices_streamed_and_on_completions(server):
    client = client_for(server)
    chunks = [c async for c in await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], n=3, max_tokens=6, temperature=0,
        stream=True, stream_options={"include_usage": True})]
    texts = {i: "" for i in range(3)}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert len(set(texts.values())) == 1 and len(texts[0]) == 6  # greedy: three equal answers
    assert chunks[-1].usage.completion_tokens == 18
    whole = await client.completions.create(model="tiny", prompt="abc", n=2, max_tokens=5, temperature=0)
    assert [c.index for c in whole.choices] == [0, 1] and whole.choices[0].text == whole.choices[1].text
    assert whole.usage.completion_tokens == 10


async def test_eight_choices_when_four_sequences_run_at_once(server):
    client = client_for(server)
    reply = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], n=8,
                                                 max_tokens=4, temperature=0.8, seed=1)
    assert len(reply.choices) == 8 and all(len(c.message.content) == 4 for c in reply.choices)
