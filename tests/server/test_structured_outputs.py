"""Structured outputs, logprobs and tool calls through the official `openai` client against
`abi dash --serve` on the tiny model (its random weights follow a grammar only because the
grammar leaves them no choice, which is the point)."""

from __future__ import annotations

import json

import jsonschema
import pytest

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "address": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10}, "zip": {"type": "integer", "minimum": 1000, "maximum": 99999}},
            "required": ["city", "zip"]}},
        "required": ["name", "address"]},
    "array": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 4}},
        "required": ["tags"]},
    "enum": {"type": "object", "properties": {
        "mood": {"enum": ["happy", "sad", "calm"]}, "ok": {"type": "boolean"}, "note": {"type": ["string", "null"],
                                                                                       "maxLength": 5}},
        "required": ["mood", "ok"]},
    "bounded": {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": -5, "maximum": 130},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "temp": {"type": "number", "exclusiveMinimum": -40.5, "exclusiveMaximum": 60},
        "count": {"type": "integer", "exclusiveMinimum": 0}},
        "required": ["age", "score", "temp", "count"]},
    "refs": {"type": "object", "$defs": {"point": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["x", "y"]}},
        "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3}},
        "required": ["points"]},
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "unit", "days"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


@pytest.fixture
def tiny_server(serve, tiny_model, tiny_env):
    return serve("--model", str(tiny_model), env=tiny_env)


def client_for(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def test_fifty_json_schema_answers_all_validate(tiny_server):
    client = client_for(tiny_server)
    checked = 0
    for seed in range(10):
        for name, schema in SCHEMAS.items():
            reply = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"give me {name}"}], seed=seed,
                temperature=1.0, max_tokens=400, response_format=schema_format(name))
            text = reply.choices[0].message.content
            jsonschema.validate(json.loads(text), schema)
            assert reply.choices[0].finish_reason == "stop", text
            checked += 1
    assert checked == 50
    # Streamed, and on the legacy route: the same guarantee.
    chunks = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], seed=3, temperature=1.0, max_tokens=400,
        response_format=schema_format("bounded"), stream=True)
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)),
                        SCHEMAS["bounded"])
    completion = client.completions.create(model="tiny", prompt="data:", seed=1, max_tokens=400,
                                           extra_body={"response_format": schema_format("nested")})
    jsonschema.validate(json.loads(completion.choices[0].text), SCHEMAS["nested"])
    # Without the grammar the tiny model writes no JSON at all: the grammar is what decides.
    free = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], seed=3,
                                          temperature=1.0, max_tokens=60)
    with pytest.raises(ValueError):
        json.loads(free.choices[0].message.content)


def test_json_object_and_abi_stream_follow_the_grammar(tiny_server):
    import httpx

    client = client_for(tiny_server)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], seed=5,
                                           temperature=0.7, max_tokens=300, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    body = {"model": "tiny", "prompt": "p", "max_tokens": 400, "seed": 2, "response_format": schema_format("enum")}
    events = httpx.post(f"{tiny_server.url}/api/stream", json=body, timeout=60).text
    text = "".join(json.loads(line[6:])["text"] for line in events.splitlines()
                   if line.startswith("data: ") and '"text"' in line)
    jsonschema.validate(json.loads(text), SCHEMAS["enum"])


@pytest.mark.parametrize(("schema", "keyword"), [
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "format": "email"}, "email"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "bounds"),
])
def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_it(tiny_server, schema, keyword):
    import openai

    client = client_for(tiny_server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=5,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "s", "schema": schema}})
    error = caught.value.body
    assert error["param"] == "response_format.json_schema.schema" and keyword in error["message"], error


def test_greedy_logprobs_are_the_sampled_tokens_and_the_most_likely(tiny_server):
    client = client_for(tiny_server)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=12, temperature=0, logprobs=True, top_logprobs=5)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == 12 == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 5 and entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.logprob >= max(t.logprob for t in entry.top_logprobs) - 1e-6
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    streamed = [c for c in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0,
        logprobs=True, top_logprobs=2, stream=True) if c.choices and c.choices[0].logprobs]
    tokens = [e.token for c in streamed for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in entries]
    legacy = client.completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0, logprobs=3)
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.token_logprobs) == 6
    assert all(max(top.values()) == pytest.approx(chosen) for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def _validate_call(call, tools=(WEATHER, CLOCK)):
    schema = next(t["function"]["parameters"] for t in tools if t["function"]["name"] == call.function.name)
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


def test_tool_round_trip_plain_and_streamed(tiny_server):
    client = client_for(tiny_server)
    messages = [{"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "Weather in Paris?"}]
    for seed in range(5):
        reply = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, CLOCK],
                                               tool_choice="required", seed=seed, temperature=1.0, max_tokens=1000)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        for call in choice.message.tool_calls:
            assert call.id.startswith("call_") and call.type == "function"
            _validate_call(call)
    named = client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER, CLOCK], seed=1, temperature=1.0, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = named.choices[0].message.tool_calls
    assert call.function.name == "get_time" and _validate_call(call)["zone"] in ("UTC", "CET")

    # The result goes back; with tool_choice "none" the model answers in text.
    call = reply.choices[0].message.tool_calls[0]
    history = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21})}]
    answer = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER, CLOCK],
                                            tool_choice="none", max_tokens=8, temperature=0)
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls
    # The tool result is in the prompt: the history costs more tokens than the question alone.
    shorter = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1, temperature=0)
    assert answer.usage.prompt_tokens > shorter.usage.prompt_tokens + len(json.dumps({"temperature_c": 21}))

    # Streamed: OpenAI's delta shape (index, id and name first, then argument fragments).
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER],
                                                 tool_choice="required", seed=4, temperature=1.0,
                                                 max_tokens=300, parallel_tool_calls=False, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert deltas[0].function.arguments == "" and all(d.index == 0 for d in deltas)
    assert all(d.id is None and d.function.name is None for d in deltas[1:]) and len(deltas) > 2
    arguments = "".join(d.function.arguments for d in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_choice_must_name_an_offered_tool(tiny_server):
    import openai

    client = client_for(tiny_server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.body["param"] == "tool_choice"


def test_pydantic_ai_agent_gets_a_validated_output(tiny_server):
    """pydantic-ai asks for its structured output through a forced `final_result` tool call:
    the call's grammar makes the arguments validate, so the agent gets its model every time."""
    from typing import Literal

    from pydantic import BaseModel, Field
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class City(BaseModel):
        name: str = Field(max_length=12)
        country: Literal["FR", "DE", "IT"]
        population: int = Field(ge=0, le=50_000_000)

    model = OpenAIChatModel("tiny", provider=OpenAIProvider(base_url=f"{tiny_server.url}/v1", api_key="unused"))
    for seed in range(4):
        agent = Agent(model, output_type=City, model_settings={
            "max_tokens": 400, "seed": seed, "temperature": 1.0, "parallel_tool_calls": False})
        result = agent.run_sync("Tell me about Paris")
        assert isinstance(result.output, City)
        parts = [type(p).__name__ for m in result.all_messages() for p in m.parts]
        assert parts == ["UserPromptPart", "ToolCallPart", "ToolReturnPart"], parts  # no retry was needed


@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_instructor_extracts_a_pydantic_model(tiny_server, mode):
    """instructor asks for its model through a named tool call (TOOLS) or through
    `response_format` json_schema (JSON_SCHEMA); with no retries allowed, every answer validates
    on the first try because the grammar leaves the model no other output."""
    from typing import Literal

    import instructor
    from pydantic import BaseModel, Field

    class Address(BaseModel):
        city: str = Field(max_length=10)
        zip_code: int = Field(ge=1000, le=99999)

    class Person(BaseModel):
        name: str = Field(max_length=12)
        role: Literal["admin", "user", "guest"]
        addresses: list[Address] = Field(max_length=2)

    client = instructor.from_openai(client_for(tiny_server), mode=getattr(instructor.Mode, mode))
    for seed in range(3):
        person = client.chat.completions.create(
            model="tiny", response_model=Person, max_retries=0, seed=seed, temperature=1.0, max_tokens=400,
            messages=[{"role": "user", "content": "Ada Lovelace, admin, lives in London 10001"}])
        assert isinstance(person, Person)
