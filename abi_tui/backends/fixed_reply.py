"""A reply the server writes itself, streamed like a model's answer but never from a model.

Abi's refusal of a policy violation goes through the same streams, events, persistence and
usage accounting as any answer (so every client shows it the same way), without the request's
text reaching any model. Its usage is zero tokens both ways: no model read or wrote any.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from abi_tui.backends.base import CancelFlag, GenerationRequest, Prepared, TokenChannel

MODERATION_MODEL = "abi/moderation"
_PIECES = re.compile(r"\s*\S+")


class FixedReply:
    kind = "fixed"
    capacity = 1_000_000  # no model behind it: it never waits for a slot

    def __init__(self, text: str, model_id: str = MODERATION_MODEL) -> None:
        self.model_id = model_id
        self.pieces = _PIECES.findall(text) or [text]

    async def prepare(self, request: GenerationRequest) -> Prepared:
        return Prepared(request, prompt_tokens=0, max_tokens=len(self.pieces))

    def start(self, prepared: Prepared, channel: TokenChannel, cancel: CancelFlag) -> None:
        asyncio.get_running_loop().call_soon(self._write, channel, cancel)

    def _write(self, channel: TokenChannel, cancel: CancelFlag) -> None:
        if cancel.is_set:
            channel.close("cancelled")
            return
        for piece in self.pieces:
            channel.put(piece, count=False)  # no model generated these: usage and TTFT stay empty
        channel.close("stop")

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "kind": self.kind}
