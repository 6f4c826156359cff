"""Ollama request fields to abi's records (no server): options, keep_alive, format, generate."""

from __future__ import annotations

import math

import pytest

from abi_tui.errors import InvalidRequest
from abi_tui.server import ollama_format as fmt


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("250ms", 0.25), (-1, math.inf), ("-1", math.inf), ("-5m", math.inf),
])
def test_keep_alive_durations(value, seconds):
    assert fmt.keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "", "5x", True, [], {"s": 1}, float("nan")])
def test_keep_alive_refuses_what_is_not_a_duration(value):
    with pytest.raises(InvalidRequest) as error:
        fmt.keep_alive_seconds(value)
    assert error.value.param == "keep_alive"


def test_options_map_to_sampling_with_ollamas_defaults():
    defaults = fmt.sampling({}).params
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.repeat_penalty) == (0.8, 0.9, 40, 1.1)
    assert defaults.max_tokens is None and defaults.stop == [] and not defaults.json_mode
    mapped = fmt.sampling({"options": {"temperature": 0, "top_k": 5, "seed": 9, "num_predict": 7,
                                       "stop": ["\n"], "num_ctx": 8192, "num_thread": 3, "mirostat": 0}})
    params = mapped.params
    assert (params.temperature, params.top_k, params.seed, params.max_tokens, params.stop) == (0.0, 5, 9, 7, ["\n"])
    assert params.top_p == 0.9  # not given: Ollama's default
    assert mapped.given == {"temperature": 0.0, "top_k": 5, "seed": 9}  # what the persona hook must not override
    assert fmt.sampling({"options": {"num_predict": -1}}).params.max_tokens is None
    assert fmt.sampling({"options": {"num_predict": -2}}).params.max_tokens is None


@pytest.mark.parametrize(("options", "param"), [
    ({"temperature": "hot"}, "options.temperature"), ({"top_p": 2}, "options.top_p"),
    ({"top_k": -1}, "options.top_k"), ({"num_predict": 0}, "options.num_predict"),
    ({"num_predict": -3}, "options.num_predict"), ({"stop": "x" * 0}, "options.stop"),
    ({"stop": [1]}, "options.stop"), ({"repeat_penalty": 0}, "options.repeat_penalty"),
    ({"mirostat": 2}, "options.mirostat"), ({"typical_p": 0.5}, "options.typical_p"),
    ({"seed": 1.5}, "options.seed"),
])
def test_bad_options_name_their_field(options, param):
    with pytest.raises(InvalidRequest) as error:
        fmt.sampling({"options": options})
    assert error.value.param == param


def test_format_json_schema_and_refusals():
    assert fmt.sampling({"format": "json"}).params.json_mode
    given = {"type": "object", "properties": {"a": {"type": "boolean"}}}
    schema = fmt.sampling({"format": given}).params
    assert schema.json_schema == given and schema.json_mode
    for bad in ("xml", 3, ["json"]):
        with pytest.raises(InvalidRequest, match="format"):
            fmt.sampling({"format": bad})
    with pytest.raises(InvalidRequest, match="uniqueItems"):
        fmt.sampling({"format": {"type": "object", "properties": {
            "a": {"type": "array", "uniqueItems": True, "items": {"type": "number"}}}}})


def test_generate_prompt_template_raw_and_refusals():
    templated = fmt.generate_input({"prompt": "hi", "system": "be brief"})
    assert templated.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    raw = fmt.generate_input({"prompt": "hi", "system": "ignored in raw mode", "raw": True})
    assert raw.messages is None and raw.prompt == "hi"
    assert fmt.generate_input({}).empty and fmt.generate_input({"prompt": ""}).empty
    for body, param in (({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": "x", "template": "{{ .Prompt }}"},
                                                                     "template"),
                        ({"prompt": "x", "context": [1, 2]}, "context"), ({"prompt": 3}, "prompt"),
                        ({"prompt": "x", "raw": "yes"}, "raw")):
        with pytest.raises(InvalidRequest) as error:
            fmt.generate_input(body)
        assert error.value.param == param


def test_model_names():
    assert fmt.strip_latest("tiny:latest") == "tiny"
    assert fmt.strip_latest("ollama:llama3.2:latest") == "ollama:llama3.2:latest"  # Ollama's own store
    assert fmt.strip_latest("owner/repo:Q4_K_M") == "owner/repo:Q4_K_M"
    for body in ({}, {"model": ""}, {"model": "  "}):
        with pytest.raises(InvalidRequest, match="model is required"):
            fmt.model_name(body)
    assert fmt.parameter_size({"size_label": "270M"}) == "270M"
    assert fmt.parameter_size({"parameters": 268_098_176}) == "268.10M"
    assert fmt.parameter_size({"parameters": 8_030_261_248}) == "8.03B"


def test_tool_history_becomes_openais_shape():
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    other = {"function": {"name": "get_time", "arguments": {"zone": "CET"}}}
    messages = fmt.chat_messages({"messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [call, other]},
        # results may come in any order: each is matched to its tool's call by name
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "hail"},
    ]})
    calls = messages[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls[0]["function"]["arguments"] == '{"city": "Paris"}' and calls[0]["id"] != calls[1]["id"]
    assert messages[2]["tool_call_id"] == calls[1]["id"] and messages[3]["tool_call_id"] == calls[0]["id"]
    assert fmt.tools({"tools": []}) is None
    assert fmt.tools({"tools": [{"type": "function", "function": {"name": "f"}}]})[0]["function"]["name"] == "f"


def test_parsed_calls_become_ollamas_shape():
    from abi_tui.backends.tool_calls import Call

    [whole, cut] = fmt.ollama_tool_calls([Call(0, "call_a", "f", '{"x": [1, 2]}'), Call(1, "call_b", "g", '{"x": ')])
    assert whole == {"id": "call_a", "function": {"index": 0, "name": "f", "arguments": {"x": [1, 2]}}}
    assert cut["function"]["arguments"] == {"arguments": '{"x": '}  # cut short by num_predict: kept as text
