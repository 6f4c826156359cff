"""Request bodies as pydantic models: the one description of what each generation route accepts.

`validate(Model, data)` turns the first validation error into a 400 naming its field (OpenAI's
`param`: `messages[0].role`, `max_tokens`), and `openapi.py` publishes `model_json_schema()` of
the same classes, so the document and the checks cannot drift apart. Every model is strict
(`"5"` is not a number, `true` is not 1): a value is accepted exactly when the schema says so.
Unknown fields are ignored, as OpenAI clients send extras (`user`, `metadata`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from abi_tui.errors import InvalidRequest

MAX_CHOICES = 8  # n: the choices decode together, sharing the prompt's cells
MAX_TOP_LOGPROBS = 20
MAX_STOPS = 16


def _integral(value: Any) -> Any:
    """A float with no fraction is an integer (JSON has one number type); a bool is not."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]


def int_in(**bounds: int) -> Any:
    """An integer with bounds (ge, le) that the JSON schema shows as minimum/maximum."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


Number = Annotated[float, Field(allow_inf_nan=False)]
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(allow_inf_nan=False, ge=-100, le=100)]
# Keys are token ids; pydantic's schema for constrained keys (patternProperties) would let
# other keys through, so the schema says it with propertyNames.
LogitBias = Annotated[dict[TokenId, Bias], WithJsonSchema({
    "type": "object", "propertyNames": {"pattern": "^[0-9]{1,10}$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})]
FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(Body):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(Body):
    name: FunctionName
    arguments: str = Field(description="the arguments as JSON text, as the model wrote them")


class ToolCall(Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Body):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(Body):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(Body):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(Body):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]
MessageList = Annotated[list[Message], Field(min_length=1)]


class FunctionDefinition(Body):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="a JSON schema for the arguments; a call's arguments always validate against it")
    strict: bool | None = None


class Tool(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: FunctionName


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(Body):
    type: Literal["text"]


class JsonObjectFormat(Body):
    type: Literal["json_object"]


class JsonSchema(Body):
    name: str = Field("response", max_length=64)
    description: str | None = None
    # `schema` is also a BaseModel attribute: the field keeps its wire name through an alias.
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema",
                                        description="the JSON schema every answer validates against")
    strict: bool | None = None

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class JsonSchemaFormat(Body):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(Body):
    include_usage: bool | None = None


class Sampling(Body):
    """Sampling options every generation route takes (OpenAI's names, plus llama.cpp's)."""

    model: str | None = None
    max_tokens: int_in(ge=1) | None = None
    max_completion_tokens: int_in(ge=1) | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    top_k: int_in(ge=0) | None = None
    min_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    seed: Int | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    repeat_penalty: Annotated[Number, Field(gt=0, le=10, description="1 = off")] | None = None
    dry_multiplier: Annotated[Number, Field(ge=0, le=10, description="DRY repetition penalty (0 = off)")] | None = None
    logit_bias: LogitBias | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


def _one_of_two(schema: dict[str, Any]) -> None:
    """prompt or messages required, neither nullable (pydantic marks a None default nullable)."""
    schema["anyOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    for key in ("prompt", "messages"):
        field = schema["properties"][key]
        field.update(next(s for s in field.pop("anyOf") if s.get("type") != "null"))
        field.pop("default", None)


class AbiStreamRequest(Sampling):
    """`POST /api/stream` and each WebSocket request: a prompt or messages, optionally a persona."""

    prompt: str | None = None
    messages: MessageList | None = None
    persona: str | None = Field(None, description="auto, abi, abbey or aviva")
    request_id: Annotated[str, StringConstraints(pattern=r"^[!-~]{1,128}$")] | None = Field(
        None, description="visible ASCII: it goes back in the X-Request-Id header")

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=lambda schema, _: _one_of_two(schema))


class PersonaChatRequest(Sampling):
    content: Annotated[str, StringConstraints(min_length=1, pattern=r"\S")] = Field(
        description="the user's message (not blank)")
    conversation_id: str | None = None


class ChatCompletionRequest(Sampling):
    messages: MessageList
    n: int_in(ge=1, le=MAX_CHOICES) | None = None
    logprobs: bool | None = None
    top_logprobs: int_in(ge=0, le=MAX_TOP_LOGPROBS) | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    n: int_in(ge=1, le=MAX_CHOICES) | None = None
    logprobs: int_in(ge=0, le=MAX_TOP_LOGPROBS) | None = Field(
        None, description="how many top tokens to list per position")
    suffix: Literal[""] | None = Field(None, description="not supported: only '' or null")
    echo: Literal[False] | None = Field(None, description="not supported: only false or null")
    best_of: Literal[1] | None = Field(None, description="not supported: only 1 or null")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest, AbiStreamRequest,
                                               PersonaChatRequest)

M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or InvalidRequest naming the first wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc, data) from None


def invalid_request(exc: ValidationError, data: Any) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    param = _param(error, data)
    return InvalidRequest(_message(error, param), param=param)


def invalid_request_at(field: str, exc: ValidationError, value: Any) -> InvalidRequest:
    """As `invalid_request`, for a value validated on its own that sits at `field` of a body."""
    error = exc.errors(include_url=False)[0]
    error = {**error, "loc": (field, *error["loc"])}
    param = _param(error, {field: value})
    return InvalidRequest(_message(error, param), param=param)


def _param(error: dict[str, Any], data: Any) -> str:
    """The field's path in OpenAI's form, walking the location through the data itself: pydantic
    adds the names of union members (`str`, `user`) that are no keys of the body."""
    loc = error["loc"]
    parts: list[str] = []
    value = data
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(step, int) and isinstance(value, list) and 0 <= step < len(value):
            parts.append(f"[{step}]")
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            if not last and loc[i + 1] == "[key]":
                break  # a bad key: name the object
            parts.append(f".{step}" if parts else step)
            value = value[step]
        elif isinstance(step, str) and last and error["type"] == "missing":
            parts.append(f".{step}" if parts else step)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found") and parts and parts[-1].endswith("]"):
        parts.append("." + str(error.get("ctx", {}).get("discriminator", "type")).strip("'\""))
    return "".join(parts) or "body"


def _message(error: dict[str, Any], param: str) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    where = f"'{param}'"
    if kind == "missing":
        return f"{where} is required"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"{where} must be an integer"
    if kind in ("float_type", "finite_number", "float_parsing"):
        return f"{where} must be a number"
    if kind == "bool_type":
        return f"{where} must be true or false"
    if kind == "string_type":
        return f"{where} must be a string"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than", "too_short", "too_long"):
        return f"{where} {error['msg'].replace('Input should', 'must').replace('List should', 'must')}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{where} must be one of {ctx.get('expected_tags', '')}"
    return f"{where}: {error['msg']}"
