"""`ollama/<model>`: Ollama's native API, newline-delimited JSON (OLLAMA_HOST).

Chat requests go to `/api/chat`; prompt requests to `/api/generate` with `raw: true`, so a
prompt is completed as written, as the local backend does. Sampling goes in `options` with
Ollama's names (`num_predict`, `repeat_penalty`, ...). The last line (`done: true`) carries
`done_reason` and the exact counts `prompt_eval_count` and `eval_count`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from abi_tui.backends.base import GenerationRequest, Usage
from abi_tui.backends.remote.backend import Delta, RemoteBackend, UpstreamCall
from abi_tui.backends.remote.errors import UpstreamError, stream_error

FINISH = {"stop": "stop", "length": "length"}


class OllamaBackend(RemoteBackend):
    kind = "ollama"
    framing = "lines"

    def headers(self) -> dict[str, str]:
        key = self.endpoint.api_key()  # Ollama has no keys; a proxy in front of it may
        return {"Authorization": f"Bearer {key}"} if key else {}

    def build(self, request: GenerationRequest) -> UpstreamCall:
        params = request.params
        # Always sent, as Ollama's own OpenAI layer does: the client's values, not the Modelfile's.
        options: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p}
        if params.max_tokens:
            options["num_predict"] = params.max_tokens
        if params.top_k:
            options["top_k"] = params.top_k
        if params.min_p:
            options["min_p"] = params.min_p
        if params.stop:
            options["stop"] = params.stop
        if params.seed is not None:
            options["seed"] = params.seed
        if params.presence_penalty:
            options["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            options["frequency_penalty"] = params.frequency_penalty
        if params.repeat_penalty != 1.0:
            options["repeat_penalty"] = params.repeat_penalty
        body: dict[str, Any] = {"model": self.model, "stream": True, "options": options}
        if params.json_mode:
            body["format"] = "json"
        if request.messages is not None:
            body["messages"] = request.messages
            return UpstreamCall("/api/chat", body)
        body["prompt"] = request.prompt or ""
        body["raw"] = True
        return UpstreamCall("/api/generate", body)

    def parse(self, call: UpstreamCall) -> Callable[[bytes], list[Delta]]:
        chat = call.path == "/api/chat"
        name = self.endpoint.name

        def parse_line(line: bytes) -> list[Delta]:
            if not line.strip():
                return []
            try:
                data = json.loads(line)
            except ValueError:
                raise UpstreamError(f"{name}: a stream line is not JSON: {line[:200]!r}") from None
            if not isinstance(data, dict):
                return []
            if "error" in data:
                return [Delta(error=stream_error(name, str(data["error"]), None))]
            if chat:
                message = data.get("message") or {}
                text, thinking = message.get("content") or "", message.get("thinking")
            else:
                text, thinking = data.get("response") or "", data.get("thinking")
            delta = Delta(text=text, alive=bool(thinking))  # thinking models: generating, not answer text
            if data.get("done"):
                delta.done = True
                delta.finish = FINISH.get(data.get("done_reason") or "stop", "stop")
                if "eval_count" in data or "prompt_eval_count" in data:
                    delta.usage = Usage(int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0))
            return [delta]

        return parse_line
