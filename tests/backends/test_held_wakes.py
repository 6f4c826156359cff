"""The compute thread holds its loop wake-ups until it is about to block in llama.cpp: nothing is
lost, the order holds, and threads that do not hold them wake the loop at once."""

from __future__ import annotations

import asyncio
import threading

from abi_tui.backends import base
from abi_tui.backends.base import TokenChannel, hold_wakes, send_wakes
from abi_tui.backends.compute import ComputeThread


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


async def test_on_asyncio_s_own_loop_the_wake_up_keeps_the_gil_and_runs_in_order(monkeypatch):
    """The wake-up that keeps the GIL reaches into asyncio's selector loop (its self-pipe socket
    and `_call_soon`); if a Python release renames them, this fails instead of falling back quietly."""
    loop = asyncio.get_running_loop()
    assert base._SEND is not None and getattr(loop, "_csock", None) is not None and hasattr(loop, "_call_soon")

    def refuse(*args):
        raise AssertionError("call_soon_threadsafe lets go of the GIL")

    monkeypatch.setattr(loop, "call_soon_threadsafe", refuse)
    seen = []
    on_thread(lambda: [base._wake(loop, seen.append, i) for i in range(3)])
    await settle()
    assert seen == [0, 1, 2]


def test_a_loop_without_a_self_pipe_socket_gets_call_soon_threadsafe():
    class OtherLoop:  # uvloop, a proactor loop, ...: no `_csock`
        def __init__(self):
            self.calls = []

        def is_closed(self):
            return False

        def call_soon_threadsafe(self, fn, arg):
            self.calls.append((fn, arg))

    other = OtherLoop()
    base._wake(other, print, "x")
    assert other.calls == [(print, "x")]


async def test_the_compute_thread_sends_held_wakes_before_it_waits_not_after_every_step(monkeypatch):
    """With work left it goes straight to the next step (whose decode sends them); a model whose
    steps never decode has its tokens sent together, once, when the thread runs out of work."""
    loop = asyncio.get_running_loop()
    channels = [TokenChannel(loop) for _ in range(3)]
    wakes = []
    real = base._wake
    monkeypatch.setattr(base, "_wake", lambda *a: (wakes.append(a), real(*a)))

    class ThreeSteps:  # one token per step, each for another stream
        def __init__(self):
            self.left = 3

        def has_work(self):
            return self.left > 0

        def step(self):
            self.left -= 1
            channels[self.left].put(f"t{self.left}")

        def idle_step(self):
            return False

    compute = ComputeThread()
    compute.register(ThreeSteps())
    assert await asyncio.wait_for(asyncio.gather(*(c.wait(5) for c in channels)), 5) == [True] * 3
    await settle()
    assert [c.drain() for c in channels] == [["t0"], ["t1"], ["t2"]]
    assert len(wakes) == 1


def test_an_idle_compute_thread_does_idle_work_until_there_is_none_then_waits():
    done = threading.Event()

    class IdleWork:
        def __init__(self):
            self.calls = 0

        def has_work(self):
            return False

        def step(self):
            raise AssertionError("no work to step")

        def idle_step(self):
            self.calls += 1
            if self.calls == 3:
                done.set()
            return self.calls < 3  # two pieces of idle work, then nothing left

    model = IdleWork()
    compute = ComputeThread()
    compute.register(model)
    assert done.wait(5)
    compute.wake()  # a spurious wake-up: nothing to do, and no more idle work either
    assert compute.call(lambda: model.calls) == 3
