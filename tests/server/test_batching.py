"""Continuous batching (issue 10): sequences decoded together give what they give alone, join
between steps, and report their share of the context."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from abi_tui.backends.saved_prefixes import common_prefix

JSON = {"Content-Type": "application/json"}
PROMPTS = ["alpha beta", "the quick brown fox", "0123456789", "zz"]


async def complete(session, prompt, max_tokens=48):
    async with session.post("/v1/completions", headers=JSON, data=json.dumps(
            {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0})) as response:
        assert response.status == 200
        return (await response.json())["choices"][0]["text"]


async def test_four_concurrent_streams_match_solo_runs(app_server, tiny_model):
    server = await app_server(model=str(tiny_model), parallel=4, threads=1)
    backend = server.state.engine.active_backend()
    batch_sizes = []
    step = backend._step

    def recording_step():
        step()
        batch_sizes.append(len(backend._active))

    async with aiohttp.ClientSession(server.url) as session:
        solo = [await complete(session, p) for p in PROMPTS]
        backend._step = recording_step
        together = await asyncio.gather(*[complete(session, p) for p in PROMPTS])
    assert together == solo
    assert max(batch_sizes) >= 2  # they really were decoded in the same steps


async def test_request_joins_between_steps(app_server, tiny_model):
    """A request arriving while another generates starts before the first one ends."""
    server = await app_server(model=str(tiny_model), parallel=2, threads=1)
    backend = server.state.engine.active_backend()
    import time

    step = backend._step

    def slow_step():
        time.sleep(0.005)
        step()

    backend._step = slow_step
    async with aiohttp.ClientSession(server.url) as session:
        long_task = asyncio.create_task(complete(session, "long", max_tokens=300))
        while not backend._active:
            await asyncio.sleep(0.005)
        await complete(session, "short", max_tokens=3)
        assert not long_task.done()
        await long_task


async def test_context_share_in_health_and_pool(app_server, tiny_model):
    server = await app_server(model=str(tiny_model), parallel=3, n_ctx=256, threads=1)
    async with aiohttp.ClientSession(server.url) as session:
        async with session.get("/health") as response:
            health = await response.json()
    assert health["context_per_request"] == 256 and health["parallel"] == 3
    stats = server.state.engine.pool.stats()["models"][0]
    # n_ctx for each of the 3 sequences and for the one pinned prefixes are prefilled in.
    assert stats["context_per_request"] == 256 and stats["kv_cells_capacity"] == 4 * 256
    assert stats["sequences_max"] == 3


async def test_prompt_prefix_is_reused_and_answers_do_not_change(app_server, tiny_model):
    """A second turn that repeats the first prefills only what is new, and answers exactly as a
    fresh llama.cpp context does."""
    from llama_cpp import Llama
    from tiny_gguf import LLAMA_KWARGS

    server = await app_server(model=str(tiny_model), parallel=2, threads=1)
    backend = server.state.engine.active_backend()
    first_prompt = "The first turn of a conversation."
    async with aiohttp.ClientSession(server.url) as session:
        first = await complete(session, first_prompt, max_tokens=16)
        assert backend.prompt_tokens_reused == 0
        second_prompt = first_prompt + first + " And the second turn."
        second = await complete(session, second_prompt, max_tokens=16)
    assert backend.prompt_tokens_reused >= len(first_prompt.encode()) + 16  # one token per byte
    fresh = Llama(model_path=str(tiny_model), n_ctx=512, **LLAMA_KWARGS)
    expected = fresh.create_completion(second_prompt, max_tokens=16, temperature=0)["choices"][0]["text"]
    assert second == expected


async def test_more_conversations_than_sequences_keep_their_prefixes(app_server, tiny_model):
    """Finished sequences keep their cells for a next turn. A new conversation that shares only
    the BOS token with them takes the lowest free sequence, and what that sequence kept is saved
    to host memory first: with five conversations on two sequences, every conversation's next
    turn still prefills only what is new, and answers as a fresh llama.cpp context does."""
    from llama_cpp import Llama
    from tiny_gguf import LLAMA_KWARGS

    server = await app_server(model=str(tiny_model), parallel=2, threads=1, n_ctx=1024)
    backend = server.state.engine.active_backend()
    topics = ("Apples", "Boats", "Clouds", "Dunes", "Eels")
    turns = [f"{topic}: " + "a long opening message " * 16 for topic in topics]
    follow_ups = []
    async with aiohttp.ClientSession(server.url) as session:
        answers = [await complete(session, turn, max_tokens=8) for turn in turns]
        assert len(backend._slot_tokens) + backend.stats()["prefixes_saved"] >= len(topics)  # kept, saved or both
        assert backend.stats()["saved_prefix_bytes"] > 0
        for turn, answer in zip(turns, answers):
            reused = backend.prompt_tokens_reused
            follow_up = turn + answer + " And a follow-up."
            follow_ups.append((follow_up, await complete(session, follow_up, max_tokens=8)))
            assert backend.prompt_tokens_reused - reused >= len(turn.encode())
    fresh = Llama(model_path=str(tiny_model), n_ctx=1024, **LLAMA_KWARGS)
    for prompt, answer in follow_ups:
        assert answer == fresh.create_completion(prompt, max_tokens=8, temperature=0)["choices"][0]["text"]


async def test_running_sequences_take_the_lowest_ids_in_order(app_server, tiny_model):
    """With a KV cache per sequence, llama.cpp decodes a batch in one graph only while its
    sequence ids are consecutive and in order: requests take the lowest free ids (a prefix kept
    on another id moves with them) and every batch is built in id order."""
    server = await app_server(model=str(tiny_model), parallel=4, threads=1, n_ctx=1024)
    backend = server.state.engine.active_backend()
    batches = []
    step = backend._step

    def recording_step():
        step()
        batch = backend._batch
        batches.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])

    turns = [f"{topic}: " + "an opening message " * 8 for topic in ("Apples", "Boats", "Clouds")]
    async with aiohttp.ClientSession(server.url) as session:
        answers = await asyncio.gather(*(complete(session, turn, max_tokens=8) for turn in turns))
        # The conversation kept on the highest id comes back alone: it moves to id 0.
        last = max(backend._slot_tokens, key=lambda i: i)
        kept = backend._slot_tokens[last]
        alone = next(t + a for t, a in zip(turns, answers) if kept[1: 1 + len(t.encode())] == list(t.encode()))
        backend._step = recording_step
        reused = backend.prompt_tokens_reused
        await complete(session, alone + " Next?", max_tokens=4)
        assert backend.prompt_tokens_reused - reused >= len(alone.encode()) - 8
        assert {i for batch in batches for i in batch} == {0}
        batches.clear()
        await asyncio.gather(*(complete(session, t + a + " More?", max_tokens=8) for t, a in zip(turns, answers)))
    assert last > 0 and batches
    assert {i for batch in batches for i in batch} == {0, 1, 2}  # three requests: the three lowest ids
    for ids in batches:
        assert ids == sorted(ids), ids


async def test_an_idle_server_saves_kept_cells_ahead_of_the_request_that_takes_them_over(app_server, tiny_model):
    """With nothing to decode, the compute thread copies a finished prompt's cells to host memory
    while they also stay in their sequence: the request that later takes that sequence over
    (one sequence here) starts without a copy, and the first prompt's next turn still prefills
    only what is new and answers as a fresh llama.cpp context does."""
    from llama_cpp import Llama
    from tiny_gguf import LLAMA_KWARGS

    server = await app_server(model=str(tiny_model), parallel=1, threads=1, n_ctx=1024)
    backend = server.state.engine.active_backend()
    long_turn = "Orchards: " + "a long pasted document about apples and pears " * 8
    async with aiohttp.ClientSession(server.url) as session:
        long_answer = await complete(session, long_turn, max_tokens=8)
        for _ in range(100):
            if backend.stats()["prefixes_saved"]:
                break
            await asyncio.sleep(0.05)
        assert backend.stats()["prefixes_saved"] == 1 and backend._slot_tokens[0][1] == ord("O")
        copies = []
        state_of = backend._state_of
        backend._state_of = lambda *a: copies.append(a) or state_of(*a)
        await complete(session, "Boats?", max_tokens=8)  # too short to be worth saving itself
        assert copies == []  # taken over without a copy on the request's path
        reused = backend.prompt_tokens_reused
        follow_up = long_turn + long_answer + " And then?"
        answer = await complete(session, follow_up, max_tokens=8)
        assert backend.prompt_tokens_reused - reused >= len(long_turn.encode())
    fresh = Llama(model_path=str(tiny_model), n_ctx=1024, **LLAMA_KWARGS)
    assert answer == fresh.create_completion(follow_up, max_tokens=8, temperature=0)["choices"][0]["text"]


async def test_kept_cells_too_large_to_save_while_idle_are_still_saved_when_taken_over(app_server, tiny_model):
    """The idle save never drops a saved prefix to make room; then the request that takes the
    sequence over saves the kept cells, the least recently used saved prefix making way, as
    without the idle save."""
    server = await app_server(model=str(tiny_model), parallel=1, threads=1, n_ctx=1024)
    backend = server.state.engine.active_backend()
    first, second = ("Orchards: " + "apples and pears " * 24, "Harbours: " + "boats and nets " * 27)

    async def saved_prefixes(count):
        for _ in range(100):
            if backend.stats()["prefixes_saved"] == count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(backend.stats())

    async with aiohttp.ClientSession(server.url) as session:
        await complete(session, first, max_tokens=8)
        await saved_prefixes(1)  # saved while idle
        backend._saved.budget_bytes = backend._saved.bytes * 3 // 2  # no room for a second one
        answer = await complete(session, second, max_tokens=8)
        await asyncio.sleep(0.3)
        assert backend.stats()["prefixes_saved"] == 1  # the idle save made no room by dropping
        await complete(session, "Dunes?", max_tokens=4)  # takes the sequence over
        await saved_prefixes(1)  # the second one saved, the first one dropped
        reused = backend.prompt_tokens_reused
        await complete(session, second + answer + " More?", max_tokens=4)
        assert backend.prompt_tokens_reused - reused >= len(second.encode())


async def test_flash_attention_setting_reaches_llama_cpp(app_server, tiny_model):
    """`--flash-attn off` builds the attention without llama.cpp's fused kernel: the scores matrix
    it then materializes shows in the compute buffer llama.cpp reports; greedy answers still come."""
    compute = {}
    for setting in ("on", "off"):
        server = await app_server(model=str(tiny_model), parallel=2, n_ctx=256, threads=1, flash_attn=setting)
        compute[setting] = server.state.engine.pool.stats()["models"][0]["bytes"]["compute"]
        async with aiohttp.ClientSession(server.url) as session:
            assert await complete(session, "alpha beta", max_tokens=8)
    assert compute["off"] > 2 * compute["on"], compute


async def test_a_pinned_prefix_is_prefilled_once_and_answers_do_not_change(app_server, tiny_model):
    """A prompt that starts with a pinned prefix copies its cells instead of prefilling them,
    in every free sequence, and answers exactly as a fresh llama.cpp context does; a second pin
    for the same key with other text replaces the first."""
    from llama_cpp import Llama
    from tiny_gguf import LLAMA_KWARGS

    # n_ctx 512: the personas' own prefixes (thousands of byte tokens here) do not fit the pins.
    server = await app_server(model=str(tiny_model), parallel=2, threads=1, n_ctx=512)
    backend = server.state.engine.active_backend()
    prefix = "A shared instruction block that every conversation starts with. " * 3
    done = backend.pin_prefix("persona:test", prefix)
    assert done is not None and await asyncio.to_thread(done.wait, 30)
    assert backend.stats()["prefixes_pinned"] == {"persona:test": len(prefix.encode()) + 1}  # bytes + BOS
    prompts = [prefix + "First question?", prefix + "Another one, longer than the first?", prefix + "Third?"]
    async with aiohttp.ClientSession(server.url) as session:
        answers = await asyncio.gather(*(complete(session, p, max_tokens=12) for p in prompts[:2]))
        answers.append(await complete(session, prompts[2], max_tokens=12))
    assert backend.prompt_tokens_reused >= 3 * len(prefix.encode())
    fresh = Llama(model_path=str(tiny_model), n_ctx=512, **LLAMA_KWARGS)
    for prompt, answer in zip(prompts, answers):
        assert answer == fresh.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
    other = "A different block. " * 4
    assert await asyncio.to_thread(backend.pin_prefix("persona:test", other).wait, 30)
    assert backend.stats()["prefixes_pinned"] == {"persona:test": len(other.encode()) + 1}


@pytest.mark.parametrize("apart", [True, False])
async def test_two_sequences_answer_the_same_decoded_apart_or_together(app_server, tiny_model, apart):
    """A step of two one-token rows runs as two graphs where the warm-up timed that faster (on
    CPU for some weight types), else as one batch: either way each stream gets what it gets alone."""
    import llama_cpp as L

    server = await app_server(model=str(tiny_model), parallel=2, threads=1)
    backend = server.state.engine.active_backend()
    for seq_id in (0, 1):  # the warm-up's timing leaves no cells behind
        assert L.llama_memory_seq_pos_max(backend.ctx.memory, seq_id) == -1
    sizes = []
    decode = backend._decode

    def recording_decode(batch):
        sizes.append(batch.n_tokens)
        decode(batch)

    async with aiohttp.ClientSession(server.url) as session:
        solo = [await complete(session, p) for p in PROMPTS[:2]]
        backend.pairs_apart = apart
        backend._decode = recording_decode
        together = await asyncio.gather(*[complete(session, p) for p in PROMPTS[:2]])
    assert together == solo
    assert backend.stats()["pairs_decoded_apart"] is apart
    if apart:
        assert 2 not in sizes and sizes.count(1) >= 2 * 40
    else:
        assert sizes.count(2) >= 40


async def pins_prefilled(backend, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not backend.pins_ready or not all(done.is_set() for done in list(backend.pins_ready.values())):
        assert asyncio.get_running_loop().time() < deadline, "persona prompts not prefilled"
        await asyncio.sleep(0.05)


def test_pairs_go_apart_only_when_the_timings_say_so_by_a_margin():
    from abi_tui.backends.llamacpp import prefer_apart

    assert prefer_apart([0.022] * 5, [0.020] * 5)
    assert not prefer_apart([0.020] * 5, [0.020] * 5)  # equal: one graph run is simpler
    assert not prefer_apart([0.020] * 5, [0.0197] * 5)  # within the margin
    assert not prefer_apart([0.010] * 5, [0.019] * 5)  # a GPU's batch of two
    assert prefer_apart([0.022, 0.022, 0.500, 0.022, 0.022], [0.020, 0.020, 0.020, 0.400, 0.020])  # medians
    assert not prefer_apart([], [])


async def test_a_sliding_window_model_reuses_a_prefix_only_with_its_window(app_server, gemma_model):
    """gemma 3 attends over a 512-token window in 5 of 6 layers, and its window cache keeps only
    about the last 1,024 cells of a sequence. A prompt sharing the first ~1,400 tokens of a kept
    ~2,600-token one finds none of its window cells left before token 1,400: it prefills from
    the start (as llama-server does), and answers as it does on a fresh server."""
    line = ("The committee met again to review the harbour survey, the budget for the new pier and "
            "the letters from the fishing families. ")
    first = line * 110  # about 2,600 tokens
    second = line * 60 + "In short, the committee decided that"
    server = await app_server(model=str(gemma_model), parallel=1, n_ctx=4096, threads=2)
    backend = server.state.engine.active_backend()
    await pins_prefilled(backend)  # the persona prompts, prefilled at load: not in these batches
    async with aiohttp.ClientSession(server.url) as session:
        await complete(session, first, max_tokens=2)
        kept = len(backend._slot_tokens[0])
        shared = common_prefix(backend._slot_tokens[0], backend.tokenize(second, add_bos=True))
        assert kept > 2_400 and kept // 2 < shared < kept - 1_100  # worth reusing, but its window is gone
        reused = backend.prompt_tokens_reused
        answer = await complete(session, second, max_tokens=6)
        assert backend.prompt_tokens_reused == reused
    fresh = await app_server(model=str(gemma_model), parallel=1, n_ctx=4096, threads=2)
    await pins_prefilled(fresh.state.engine.active_backend())
    async with aiohttp.ClientSession(fresh.url) as session:
        assert await complete(session, second, max_tokens=6) == answer
