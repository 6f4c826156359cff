"""Server events (model loading/ready/failed, pool changes, downloads, reloads, telemetry)
fanned out to every `/api/events` subscriber, with a short history for late joiners."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import deque
from typing import Any

SUBSCRIBER_BUFFER = 1000
CLOSED = {"type": "server.closing"}  # put in every queue at shutdown: the stream handlers end


class EventBus:
    def __init__(self, history: int = 200) -> None:
        self._ids = itertools.count()
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self._subscribers: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        # Event ids restart with the process; clients use the instance to tell a restart apart.
        self.instance = uuid.uuid4().hex[:12]

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Publish from the loop or from any thread."""
        loop = self._loop
        if loop is not None and not self._on_loop(loop):
            loop.call_soon_threadsafe(self._publish, kind, data)
        else:
            self._publish(kind, data)

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        event = {"id": next(self._ids), "type": kind, "ts": time.time(), "data": data}
        if kind != "telemetry.sample":  # samples have their own history in /api/telemetry
            self.history.append(event)
        for queue in list(self._subscribers):
            if queue.full():  # a slow subscriber loses its oldest events, never blocks the server
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_BUFFER)
        self._subscribers.add(queue)
        return queue

    def close(self) -> None:
        """End every subscriber's stream (graceful shutdown must not wait on them)."""
        for queue in list(self._subscribers):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(CLOSED)

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
