"""`openai/<model>` and `<endpoint>/<model>`: OpenAI-compatible HTTP (OpenAI, vLLM, llama-server,
LM Studio, another abi server).

Chat requests go to `/chat/completions`, prompt requests to the legacy `/completions`, always
with `stream: true` and `stream_options.include_usage` so the provider's usage is exact. The
public OpenAI API (`openai/`) gets its own parameter names (`max_completion_tokens`) and no
extensions; named endpoints get `max_tokens` (what every compatible server reads) plus the
llama.cpp/vLLM extensions `top_k`, `min_p` and `repeat_penalty` when a client set them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from abi_tui.backends.base import GenerationRequest, Usage
from abi_tui.backends.remote.backend import Delta, RemoteBackend, UpstreamCall
from abi_tui.backends.remote.errors import UpstreamError, stream_error
from abi_tui.net.sse import SseEvent


class OpenAICompatBackend(RemoteBackend):
    kind = "openai"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        key = self.endpoint.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def build(self, request: GenerationRequest) -> UpstreamCall:
        params = request.params
        official = self.endpoint.builtin
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if request.messages is not None:
            path = "/chat/completions"
            body["messages"] = request.messages
            limit_key = "max_completion_tokens" if official else "max_tokens"
        else:
            path = "/completions"
            body["prompt"] = request.prompt or ""
            limit_key = "max_tokens"
        # The client's temperature always goes: servers differ in their defaults (llama-server 0.8).
        body["temperature"] = params.temperature
        if params.top_p != 1.0:
            body["top_p"] = params.top_p
        if params.max_tokens:
            body[limit_key] = params.max_tokens
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.presence_penalty:
            body["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            body["frequency_penalty"] = params.frequency_penalty
        if params.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias.items()}
        if params.json_mode:
            body["response_format"] = {"type": "json_object"}
        if not official:  # extensions the public API would reject as unknown arguments
            if params.top_k:
                body["top_k"] = params.top_k
            if params.min_p:
                body["min_p"] = params.min_p
            if params.repeat_penalty != 1.0:
                body["repeat_penalty"] = params.repeat_penalty
        return UpstreamCall(path, body)

    def parse(self, call: UpstreamCall) -> Callable[[SseEvent], list[Delta]]:
        chat = call.path == "/chat/completions"
        name = self.endpoint.name

        def parse_event(event: SseEvent) -> list[Delta]:
            data = event.data.strip()
            if data == "[DONE]":
                return [Delta(done=True)]
            if not data:
                return []
            try:
                chunk = json.loads(data)
            except ValueError:
                raise UpstreamError(f"{name}: the stream carried something that is not JSON: {data[:200]!r}") from None
            if not isinstance(chunk, dict):
                return []
            error = chunk.get("error")
            if error is not None:
                if isinstance(error, dict):
                    code, param = error.get("code"), error.get("param")
                    return [Delta(error=stream_error(name, str(error.get("message") or error), error.get("type"),
                                                     code if isinstance(code, str) else None,
                                                     param if isinstance(param, str) else None))]
                return [Delta(error=stream_error(name, str(error), None))]
            delta = Delta()
            choices = chunk.get("choices") or []
            if choices and isinstance(choices[0], dict):
                choice = choices[0]
                if chat:
                    message = choice.get("delta") or {}
                    delta.text = message.get("content") or ""
                    # vLLM, DeepSeek and others stream reasoning apart from the answer.
                    delta.alive = bool(message.get("reasoning_content") or message.get("reasoning"))
                else:
                    delta.text = choice.get("text") or ""
                delta.finish = choice.get("finish_reason")  # OpenAI's reasons pass through as they are
            usage = chunk.get("usage")
            if isinstance(usage, dict) and "completion_tokens" in usage:
                delta.usage = Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            return [delta]

        return parse_event
