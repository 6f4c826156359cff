"""The write timeout of streamed responses (`WriteDeadline`) and the token channel's heartbeat
timer: one timer per period rather than per write or per token, with the same outcomes."""

from __future__ import annotations

import asyncio

import pytest

from abi_tui.backends.base import TokenChannel
from abi_tui.server.streaming import ClientStalled, WriteDeadline


class Response:
    """A response whose writes wait on `gate` (a client that stops reading) while it is set."""

    def __init__(self) -> None:
        self.gate: asyncio.Future | None = None
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate
        self.written.append(data)

    async def write_eof(self) -> None:
        self.written.append(b"<eof>")


async def test_a_write_that_waits_past_the_timeout_is_a_stall():
    response = Response()
    deadline = WriteDeadline(0.2)
    await deadline.write(response, b"a")
    await asyncio.sleep(0.3)  # quiet between writes is not a stall
    await deadline.write(response, b"b")
    response.gate = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(2, response.gate.set_result, None)  # bounded if unenforced
    started = asyncio.get_running_loop().time()
    with pytest.raises(ClientStalled, match="0.2 s"):
        await deadline.write(response, b"c")
    assert 0.19 <= asyncio.get_running_loop().time() - started < 0.6
    assert not asyncio.current_task().cancelling()  # our cancel was taken back
    with pytest.raises(ClientStalled):
        await deadline.write(response, None)  # later writes fail at once
    assert response.written == [b"a", b"b"]


async def test_someone_elses_cancel_stays_a_cancel():
    response = Response()
    response.gate = asyncio.get_running_loop().create_future()

    async def writer() -> None:
        await WriteDeadline(5.0).write(response, b"x")

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_timeout_means_no_timer_and_the_timer_stops_with_its_task():
    response = Response()
    assert WriteDeadline(None)._timer is None

    async def short() -> WriteDeadline:
        deadline = WriteDeadline(0.05)
        await deadline.write(response, b"x")
        return deadline

    deadline = await asyncio.create_task(short())
    await asyncio.sleep(0.12)
    assert deadline._timer is None  # it fired once, saw the task done, and was not re-armed


async def test_channel_wait_times_out_only_after_a_quiet_period():
    channel = TokenChannel(asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await channel.wait(0.2) is False  # nothing at all for 0.2 s
    assert loop.time() - started >= 0.19

    async def trickle() -> None:  # a piece every 0.1 s: never quiet for 0.2 s
        for _ in range(4):
            await asyncio.sleep(0.1)
            channel.put("t")

    producer = asyncio.create_task(trickle())
    results = []
    while not producer.done() or channel.backlog:
        results.append(await channel.wait(0.2))
        channel.drain()
    assert results and all(results)
    channel.put("t")  # then the consumer is busy for 0.15 s (writing, say) before it waits
    await asyncio.sleep(0.15)
    channel.drain()
    started = loop.time()
    assert await channel.wait(0.2) is False
    # quiet counts from the last piece (about 0.05 s left), not from this wait (a timer armed
    # per wait never fires before 0.2 s): the bound leaves a loaded machine room
    assert loop.time() - started < 0.18
    channel.close("stop")
    assert await channel.wait(0.2) is True
    assert channel._quiet_timer is None
