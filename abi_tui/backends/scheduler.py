"""Admission: which requests generate now, which wait, which are refused (FIFO).

Every request belongs to a lane (the model it addresses). A lane runs up to its capacity at once,
the whole server up to `max_streams`; the rest wait in one FIFO queue of at most `max_queue`.
A paused lane (a hot reload draining it) grants nothing, so its requests wait rather than fail.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from abi_tui.errors import QueueFull

# The lane of the active model (the one requests without a pool model address); the engine
# admits into it and a hot reload pauses and drains it.
ACTIVE_LANE = "active"


@dataclass(eq=False)
class Lane:
    name: str
    capacity: Callable[[], int]
    active: int = 0
    paused: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(eq=False)
class Ticket:
    lane: Lane
    granted: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)
    granted_at: float | None = None
    released: bool = False


class Scheduler:
    def __init__(self, max_streams: int, max_queue: int) -> None:
        self.max_streams = max_streams
        self.max_queue = max_queue
        self.active = 0
        self.waiting: deque[Ticket] = deque()
        self.lanes: dict[str, Lane] = {}

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def lane(self, name: str, capacity: Callable[[], int]) -> Lane:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = Lane(name, capacity)
        else:
            lane.capacity = capacity
        return lane

    def enqueue(self, lane: Lane) -> Ticket:
        """Take a place in line; raises QueueFull at once when the line is full."""
        ticket = Ticket(lane, asyncio.get_running_loop().create_future())
        self.waiting.append(ticket)
        self._dispatch()
        if not ticket.granted.done() and len(self.waiting) > self.max_queue:
            self.waiting.remove(ticket)
            raise QueueFull(
                f"server busy: {self.active} streams active and {self.max_queue} requests waiting; retry shortly",
                retry_after=1.0,
            )
        return ticket

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        if ticket.granted_at is not None:
            ticket.lane.active -= 1
            self.active -= 1
            if ticket.lane.active == 0:
                ticket.lane.idle.set()
        else:
            try:
                self.waiting.remove(ticket)
            except ValueError:
                pass
            if not ticket.granted.done():
                ticket.granted.cancel()
        self._dispatch()

    def pause(self, lane: Lane) -> None:
        lane.paused = True

    def resume(self, lane: Lane) -> None:
        lane.paused = False
        self._dispatch()

    def _dispatch(self) -> None:
        blocked: set[int] = set()
        for ticket in list(self.waiting):
            if self.active >= self.max_streams:
                return
            lane = ticket.lane
            if id(lane) in blocked:
                continue
            if lane.paused or lane.active >= max(1, lane.capacity()):
                blocked.add(id(lane))  # FIFO within a lane: nobody overtakes the head
                continue
            self.waiting.remove(ticket)
            lane.active += 1
            lane.idle.clear()
            self.active += 1
            ticket.granted_at = time.perf_counter()
            if not ticket.granted.done():
                ticket.granted.set_result(None)
