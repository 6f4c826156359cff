"""`anthropic/<model>`: the Anthropic Messages API, streaming (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL).

System messages become the `system` field; a prompt request becomes one user message. The
stream is server-sent events: message_start (input usage), content_block_delta (text),
message_delta (stop_reason, output usage), message_stop, and `error` events. `max_tokens` is
required by the API: without one from the client we ask for DEFAULT_MAX_TOKENS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from abi_tui.backends.base import GenerationRequest, Usage
from abi_tui.backends.remote.backend import Delta, RemoteBackend, UpstreamCall
from abi_tui.backends.remote.errors import UpstreamError, stream_error
from abi_tui.errors import InvalidRequest
from abi_tui.net.sse import SseEvent

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
# Anthropic's stop reasons in OpenAI's words.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "refusal": "content_filter", "pause_turn": "stop", "model_context_window_exceeded": "length"}


class AnthropicBackend(RemoteBackend):
    kind = "anthropic"

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION, "Accept": "text/event-stream"}
        key = self.endpoint.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    def max_tokens(self, request: GenerationRequest) -> int:
        return request.params.max_tokens or DEFAULT_MAX_TOKENS

    def build(self, request: GenerationRequest) -> UpstreamCall:
        params = request.params
        if params.json_mode:
            raise InvalidRequest("response_format json_object is not supported by anthropic/ models; "
                                 "ask for JSON in the prompt instead", param="response_format")
        if params.logit_bias:
            raise InvalidRequest("logit_bias is not supported by anthropic/ models", param="logit_bias")
        messages = request.messages if request.messages is not None else [{"role": "user",
                                                                            "content": request.prompt or ""}]
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": self.max_tokens(request), "stream": True,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
        }
        if system:
            body["system"] = system
        # Sent only when changed: recent models refuse temperature and top_p together, and 1.0
        # is the API's default for both. seed and penalties have no Anthropic equivalent.
        if params.temperature != 1.0:
            body["temperature"] = params.temperature
        if params.top_p != 1.0:
            body["top_p"] = params.top_p
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop_sequences"] = params.stop
        return UpstreamCall("/v1/messages", body)

    def parse(self, call: UpstreamCall) -> Callable[[SseEvent], list[Delta]]:
        name = self.endpoint.name
        usage = Usage()

        def parse_event(event: SseEvent) -> list[Delta]:
            if not event.data.strip():
                return []
            kind, data = event.event, event.data
            try:
                payload = json.loads(data)
            except ValueError:
                raise UpstreamError(f"{name}: an event is not JSON: {data[:200]!r}") from None
            if not isinstance(payload, dict):
                return []
            kind = kind or payload.get("type")
            if kind == "error":
                error = payload.get("error") or {}
                return [Delta(error=stream_error(name, str(error.get("message") or payload), error.get("type")))]
            if kind == "message_start":
                _count_input(usage, (payload.get("message") or {}).get("usage") or {})
                usage.completion_tokens = int(((payload.get("message") or {}).get("usage") or {})
                                              .get("output_tokens") or 0)
                return []
            if kind == "content_block_delta":
                delta = payload.get("delta") or {}
                if delta.get("type") == "text_delta":
                    return [Delta(text=delta.get("text") or "")]
                return [Delta(alive=True)]  # thinking and tool input: generating, but not answer text
            if kind == "message_delta":
                reported = payload.get("usage") or {}
                if "output_tokens" in reported:  # cumulative, as are input counts when present
                    usage.completion_tokens = int(reported["output_tokens"] or 0)
                if reported.get("input_tokens") is not None:
                    _count_input(usage, reported)
                reason = (payload.get("delta") or {}).get("stop_reason")
                return [Delta(finish=FINISH.get(reason, "stop") if reason else None,
                              usage=Usage(usage.prompt_tokens, usage.completion_tokens))]
            if kind == "message_stop":
                return [Delta(done=True, usage=Usage(usage.prompt_tokens, usage.completion_tokens))]
            return []  # ping, content_block_start, content_block_stop, and events added later

        return parse_event


def _count_input(usage: Usage, reported: dict[str, Any]) -> None:
    # OpenAI's prompt_tokens includes cached tokens; Anthropic reports them apart.
    usage.prompt_tokens = sum(int(reported.get(key) or 0) for key in
                              ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
