"""One abi server using another as its OpenAI-compatible endpoint: two `abi dash --serve`
processes on loopback, the second configured with `[endpoints.upstream]` in its own ABI_HOME."""

from __future__ import annotations

import openai


def test_abi_server_streams_through_another_abi_server(serve, tiny_model, tiny_env, tmp_path):
    upstream = serve("--model", str(tiny_model), env=tiny_env)
    home = tmp_path / "downstream-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[endpoints.upstream]\nurl = "{upstream.url}/v1"\n', encoding="utf-8")
    downstream = serve(env={**tiny_env, "ABI_HOME": str(home)})

    direct_client = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="unused", max_retries=0, timeout=60)
    chained_client = openai.OpenAI(base_url=f"{downstream.url}/v1", api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "héllo there"}]
    direct = direct_client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)

    chunks = list(chained_client.chat.completions.create(
        model="upstream/tiny", messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content)
    assert streamed == direct.choices[0].message.content and streamed
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [direct.choices[0].finish_reason] == ["length"]
    # Usage is the upstream tokenizer's count, passed through exactly.
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (direct.usage.prompt_tokens, direct.usage.completion_tokens)
    assert all(c.model == "upstream/tiny" for c in chunks)

    # Legacy completions take the same road (upstream /v1/completions).
    whole = direct_client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0)
    chained = chained_client.completions.create(model="upstream/tiny", prompt="abc", max_tokens=8, temperature=0)
    assert chained.choices[0].text == whole.choices[0].text and chained.usage.completion_tokens == 8

    listed = {m.id for m in chained_client.models.list()}
    assert "upstream/tiny" in listed
    direct_client.close()
    chained_client.close()
