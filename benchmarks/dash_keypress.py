"""Issues 10 and 20: `abi dash` handles a key press within 50 ms, and draws the pane a key
switches to within 100 ms, while 4 streams run at full speed.

The dashboard (the real AbiApp, 120x34, driven by Textual's pilot) follows an abi server on the
tiny model started with `--parallel 4`: by default as `abi dash` runs it, `abi dash --serve` as
the dashboard's child process (ServerSupervisor: free port, fresh token); with `--embedded`, in
this process on its own thread (how `abi dash` ran it before, for comparison). Load: 4 concurrent `/v1/completions` streams with a
large `max_tokens`, restarted as they finish, from a separate process (so its own parsing does not
count against the dashboard), at whatever speed the server gives.

Measured per key press, from just before `pilot.press(key)`:
  handled  the key's binding ran (the pane switch: `AbiApp.show_pane` was called), or for
           typing, the message box holds the new character;
  painted  the first frame the app composed after that (App._display: in a terminal, the
           frame written to it; the headless pilot composes it the same way, then drops it).
Scenarios, one run, baseline first:
  idle              no streams;
  4 streams         the load above; keys switch panes, Models (2) <-> Server (5);
  4 streams + chat  3 load streams plus an answer streaming into the Chat pane on screen; keys
                    type into the message box.
A press every --gap seconds (a fast typist); p50, p95 and max per scenario.

    python benchmarks/dash_keypress.py [--presses 100] [--gap 0.08] [--embedded] [--json FILE]

Exit status 1 when a p95 "handled" is over --budget-ms (50), or the p95 "painted" of the pane
switches under 4 streams is over --redraw-budget-ms (100).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import free_port, percentile, tiny_path  # noqa: E402

PROMPT = "The history of the lighthouse begins in ancient times, when"
N_CTX = 16384  # 4 sequences of 4096: the tiny model's trained context
MAX_TOKENS = 3500
CHAT_MAX_TOKENS = 1200  # Aviva's system prompt takes ~2400 of the sequence's 4096 byte tokens


# ------------------------------------------------------------------------------- load process
async def load(url: str, streams: int, max_tokens: int) -> dict[str, float]:
    """`streams` concurrent completions, each restarted when it ends, until SIGTERM."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tokens = 0
    first: float | None = None

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal tokens, first
        body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
        token = os.environ.get("ABI_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        while not stop.is_set():
            async with session.post(f"{url}/v1/completions", json=body, headers=headers) as response:
                response.raise_for_status()
                async for line in response.content:
                    if stop.is_set():
                        return
                    if line.startswith(b"data: {") and b'"text":""' not in line:
                        tokens += 1
                        first = first or time.perf_counter()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        print("started", flush=True)
        tasks = [asyncio.create_task(one(session)) for _ in range(streams)]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - (first or time.perf_counter())
    return {"streams": streams, "tokens": tokens, "tok_s": tokens / wall if wall > 0 else 0.0}


class Load:
    """The load in a child process: started, then stopped with its token rate."""

    def __init__(self, url: str, streams: int, token: str | None) -> None:
        env = {**os.environ, **({"ABI_API_TOKEN": token} if token else {})}
        self.process = subprocess.Popen([sys.executable, __file__, "--load", url, "--streams", str(streams)],
                                        stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "started":
            raise RuntimeError("the load process did not start")

    def stop(self) -> dict[str, float]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- measurement
def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else float("nan")}


class Marks:
    """When the key was handled, and the first frame composed after that."""

    def __init__(self, app: Any) -> None:
        self.handled: float | None = None
        self.painted: float | None = None
        display = app._display

        def frame(screen: Any, renderable: Any) -> None:
            if renderable is not None and self.handled is not None and self.painted is None:
                self.painted = time.perf_counter()
            display(screen, renderable)

        app._display = frame

    def reset(self) -> None:
        self.handled = self.painted = None

    def handle(self) -> None:
        if self.handled is None:
            self.handled = time.perf_counter()


def by_pane(painted_ms: list[float]) -> dict[str, dict[str, float]]:
    return {"models": summary(painted_ms[0::2]), "server": summary(painted_ms[1::2])}


async def press_and_time(pilot: Any, key: str, handled: Callable[[], float | None],
                         painted: Callable[[], float | None], timeout: float = 5.0) -> tuple[float, float]:
    """Press `key`; return (handled, painted) latencies in ms, waiting for both."""
    start = time.perf_counter()
    await pilot.press(key)  # returns only once the app is idle again: the marks are already set
    deadline = start + timeout
    while (handled() is None or painted() is None) and time.perf_counter() < deadline:
        await asyncio.sleep(0.001)
    h, p = handled(), painted()
    if h is None or p is None:
        raise RuntimeError(f"key {key!r} was not handled within {timeout} s")
    return (h - start) * 1000, (p - start) * 1000


async def pane_switches(pilot: Any, marks: Marks, presses: int, gap: float) -> tuple[list[float], list[float]]:
    """Alternate Models (2) and Server (5): the binding runs AbiApp.show_pane. Even presses go
    to Models, odd ones to Server (`by_pane` in the report splits them)."""
    app = pilot.app
    original = app.show_pane

    def show_pane(pane_id: str) -> None:
        marks.handle()
        original(pane_id)

    app.show_pane = show_pane  # the binding's action calls self.show_pane
    handled_ms: list[float] = []
    painted_ms: list[float] = []
    try:
        for i in range(presses):
            marks.reset()
            h, p = await press_and_time(pilot, "2" if i % 2 == 0 else "5", lambda: marks.handled,
                                        lambda: marks.painted)
            handled_ms.append(h)
            painted_ms.append(p)
            await asyncio.sleep(gap)
    finally:
        app.show_pane = original
    return handled_ms, painted_ms


async def typing(pilot: Any, marks: Marks, presses: int, gap: float, keep_streaming: Callable[[], Any]
                 ) -> tuple[list[float], list[float]]:
    """Type into the Chat pane's message box while its answer streams: handled when the box
    posts TextArea.Changed with the new character in it."""
    from textual.widgets import TextArea

    from abi_tui.widgets.chat_view import ChatInput

    app = pilot.app
    box = app.pane("chat").query_one(ChatInput)
    box.focus()
    expected = {"length": 0}
    original_post = box.post_message

    def post_message(message: Any) -> bool:
        if isinstance(message, TextArea.Changed) and len(box.text) >= expected["length"]:
            marks.handle()
        return original_post(message)

    box.post_message = post_message  # type: ignore[method-assign]
    handled_ms: list[float] = []
    painted_ms: list[float] = []
    try:
        for i in range(presses):
            await keep_streaming()
            if len(box.text) > 60:
                box.clear()
                await pilot.pause()
            expected["length"] = len(box.text) + 1
            marks.reset()
            h, p = await press_and_time(pilot, "abcdefghij"[i % 10], lambda: marks.handled,
                                        lambda: marks.painted)
            handled_ms.append(h)
            painted_ms.append(p)
            await asyncio.sleep(gap)
    finally:
        box.post_message = original_post  # type: ignore[method-assign]
    return handled_ms, painted_ms


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from abi_tui.app import AbiApp
    from abi_tui.config import load_settings
    from abi_tui.widgets.chat_view import ChatInput

    results: dict[str, Any] = {"presses": args.presses, "gap_s": args.gap, "cpus": os.cpu_count(),
                               "loadavg_before": os.getloadavg()[0],
                               "server": "thread (embedded)" if args.embedded else "child process"}
    model = tiny_path()
    with ExitStack() as stack:
        home = stack.enter_context(tempfile.TemporaryDirectory(prefix="abi-keypress-"))
        os.environ["ABI_HOME"] = home
        overrides = {"server.model": str(model), "server.parallel": 4, "server.n_ctx": N_CTX, "server.threads": 1}
        if args.embedded:
            from abi_tui.server.main import EmbeddedServer

            settings = load_settings({**overrides, "server.port": free_port()})
            app = AbiApp(settings, embedded=EmbeddedServer, persist_theme=False)
        else:
            from abi_tui.server.supervisor import ServerSupervisor

            settings = load_settings()
            supervisor = ServerSupervisor(["--model", str(model), "--parallel", "4", "--n-ctx", str(N_CTX),
                                           "--threads", "1"], logs_dir=settings.logs_dir).launch()
            stack.callback(supervisor.stop)
            app = AbiApp(settings, server=supervisor, persist_theme=False)

        async with app.run_test(size=(120, 34)) as pilot:
            deadline = time.monotonic() + 60
            while not (app.link.connected and app.link.health and app.link.health.model):
                if time.monotonic() > deadline:
                    log = settings.logs_dir / "server.log"
                    tail = log.read_text()[-2000:] if log.exists() else "(no server.log)"
                    raise RuntimeError(f"the dashboard did not connect: {app.link.error}; "
                                       f"health {app.link.health}; server.log ends:\n{tail}")
                await pilot.pause(0.1)
            url = app.link.url
            assert url is not None
            chat = app.pane("chat")
            box = chat.query_one(ChatInput)

            await pilot.press("escape")  # out of the message box: pane keys work
            await pilot.press("2")
            await pilot.pause(1.0)  # the Models pane mounts and lists the cache
            print("idle ...", file=sys.stderr)
            marks = Marks(app)
            h, p = await pane_switches(pilot, marks, args.presses, args.gap)
            results["idle"] = {"handled_ms": summary(h), "painted_ms": summary(p), "by_pane": by_pane(p)}

            print("4 streams ...", file=sys.stderr)
            load_4 = Load(url, 4, app.token)
            await asyncio.sleep(1.0)  # at full speed before the first press
            h, p = await pane_switches(pilot, marks, args.presses, args.gap)
            results["4 streams"] = {"handled_ms": summary(h), "painted_ms": summary(p), "by_pane": by_pane(p),
                                    "load": load_4.stop()}

            print("4 streams + chat ...", file=sys.stderr)
            await pilot.press("1")
            await pilot.pause(0.5)
            chat.request_options = {"max_tokens": CHAT_MAX_TOKENS}
            chat.action_set_persona("aviva")
            answers = {"count": 0, "tokens": 0}

            async def keep_streaming() -> None:
                """An answer streaming on screen all the time: start the next when one ends."""
                if chat.streaming is not None:
                    return
                if answers["count"]:
                    answers["tokens"] += chat.query_one("ChatLog").answers()[-1].tokens
                typed = box.text
                box.text = "Write a Python function that parses a CSV file"
                chat.action_send()
                box.text = typed
                answers["count"] += 1
                while chat.streaming is not None and chat.streaming.tokens == 0:
                    await asyncio.sleep(0.01)

            await keep_streaming()  # warm-up: the first persona turn opens the server's stores
            while chat.streaming is not None:
                await pilot.pause(0.1)
            answers["count"] = 0
            load_3 = Load(url, 3, app.token)
            await asyncio.sleep(1.0)
            started = time.perf_counter()
            h, p = await typing(pilot, marks, args.presses, args.gap, keep_streaming)
            elapsed = time.perf_counter() - started
            if chat.streaming is not None:
                answers["tokens"] += chat.streaming.tokens
            results["4 streams + chat"] = {"handled_ms": summary(h), "painted_ms": summary(p), "load": load_3.stop(),
                                           "chat": {"answers": answers["count"],
                                                    "tok_s": answers["tokens"] / elapsed if elapsed else 0.0}}
            if chat.streaming is not None:
                chat.action_cancel()
                await pilot.pause(0.3)
    results["loadavg_after"] = os.getloadavg()[0]
    return results


def report(results: dict[str, Any], budget_ms: float, redraw_budget_ms: float) -> bool:
    print(f"\nKey press latency, ms ({results['presses']} presses per scenario, one every {results['gap_s']} s; "
          f"server: {results['server']}; {results['cpus']} CPUs, load average {results['loadavg_before']:.1f} before, "
          f"{results['loadavg_after']:.1f} after)")
    print(f"{'scenario':<18} {'handled p50':>11} {'p95':>7} {'max':>7}   {'painted p50':>11} {'p95':>7} {'max':>7}   load")
    ok = True
    for name in ("idle", "4 streams", "4 streams + chat"):
        r = results[name]
        h, p = r["handled_ms"], r["painted_ms"]
        ok = ok and h["p95"] <= budget_ms
        load = ""
        if "load" in r:
            load = f"{r['load']['streams']} x /v1/completions: {r['load']['tok_s']:.0f} tok/s"
        if "chat" in r:
            load += f" + chat pane {r['chat']['tok_s']:.0f} tok/s"
        print(f"{name:<18} {h['p50']:>11.1f} {h['p95']:>7.1f} {h['max']:>7.1f}   {p['p50']:>11.1f} {p['p95']:>7.1f} "
              f"{p['max']:>7.1f}   {load}")
        for pane, q in r.get("by_pane", {}).items():
            print(f"{'  to ' + pane:<18} {'':>11} {'':>7} {'':>7}   {q['p50']:>11.1f} {q['p95']:>7.1f} {q['max']:>7.1f}")
    base = results["idle"]["handled_ms"]["p50"]
    loaded = results["4 streams"]["handled_ms"]["p50"]
    print(f"4 streams / idle (handled p50): {loaded / base:.2f}x;  p95 budget {budget_ms:.0f} ms: "
          f"{'met' if ok else 'MISSED'}")
    redraw = results["4 streams"]["painted_ms"]["p95"]
    print(f"pane switch under 4 streams, first redraw p95 {redraw:.1f} ms; budget {redraw_budget_ms:.0f} ms: "
          f"{'met' if redraw <= redraw_budget_ms else 'MISSED'}")
    return ok and redraw <= redraw_budget_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.08, help="seconds between presses")
    parser.add_argument("--embedded", action="store_true", help="the server on a thread of this process")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--redraw-budget-ms", type=float, default=100.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(asyncio.run(load(args.load, args.streams, MAX_TOKENS))), flush=True)
        return 0
    results = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if report(results, args.budget_ms, args.redraw_budget_ms) else 1


if __name__ == "__main__":
    sys.exit(main())
