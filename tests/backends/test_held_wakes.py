"""The compute thread holds its loop wake-ups until it is about to block in llama.cpp: nothing is
lost, the order holds, and threads that do not hold them wake the loop at once."""

from __future__ import annotations

import asyncio
import threading

from abi_tui.backends.base import TokenChannel, hold_wakes, send_wakes


def on_thread(fn):
    """Run fn on a new thread (as the compute thread would) and wait for it."""
    errors = []

    def run():
        try:
            fn()
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not errors, errors


async def settle():
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_held_tokens_reach_the_loop_only_when_sent_and_in_order():
    loop = asyncio.get_running_loop()
    channels = [TokenChannel(loop) for _ in range(3)]
    go = threading.Event()
    sent = threading.Event()

    def producer():
        hold_wakes()
        for step in range(2):
            for i, channel in enumerate(channels):
                channel.put(f"{i}.{step} ")
        channels[2].close("stop")
        go.wait(10)
        send_wakes()
        sent.set()

    waiting = [asyncio.ensure_future(channel.wait(5)) for channel in channels]
    await settle()
    thread = threading.Thread(target=producer)
    thread.start()
    await settle()
    # Held: the pieces are queued, but no waiting consumer was woken and the close has not happened.
    assert not any(w.done() for w in waiting)
    assert all(not channel.closed for channel in channels)
    go.set()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 2) == [True, True, True]
    thread.join(10)
    assert sent.is_set()
    await settle()
    assert [channel.drain() for channel in channels] == [["0.0 ", "0.1 "], ["1.0 ", "1.1 "], ["2.0 ", "2.1 "]]
    assert channels[2].closed and channels[2].finish_reason == "stop"
    assert not channels[0].closed


async def test_a_thread_that_does_not_hold_wakes_the_loop_at_once():
    loop = asyncio.get_running_loop()
    channel = TokenChannel(loop)
    waiting = asyncio.ensure_future(channel.wait(5))
    await settle()
    on_thread(lambda: channel.put("hello"))
    assert await asyncio.wait_for(waiting, 2) is True
    assert channel.drain() == ["hello"]


async def test_wakes_held_for_a_closed_loop_are_dropped_without_an_error():
    other = asyncio.new_event_loop()
    channel = TokenChannel(other)
    other.close()

    def producer():
        hold_wakes()
        channel.put("late")
        channel.close("stop")
        send_wakes()  # must not raise into the compute thread

    on_thread(producer)
    assert channel.backlog == 1
