"""How long `abi dash` takes to paint its first screen, against a bare Textual app as baseline.

Each run starts the program in a pseudo-terminal (110x32) with a fresh $ABI_HOME, reads what it
writes, and stops the clock when the first full frame is on screen: the header and the pane
tabs ("5 Server"). The dashboard's server starts after that frame, in a child process of its own
(`abi dash --serve` on a free loopback port), so the number is what a user waits for before
the dashboard answers keys. The baseline is a minimal
Textual app painting one line the same way: the difference is abi's own start-up cost.

    python benchmarks/dash_startup.py [--runs 5] [--budget 1.5]

Exit status 1 when the median of `abi dash` is over the budget.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]|\x1b\][^\x07]*\x07")
COLUMNS, ROWS = 110, 32

BASELINE_APP = textwrap.dedent("""
    from textual.app import App
    from textual.widgets import Static

    class Hello(App):
        def compose(self):
            yield Static("1 Chat  2 Models  3 GPU  4 Bench  5 Server")

    Hello().run()
""")


def first_paint(command: list[str], marker: bytes, env: dict[str, str], timeout: float = 20.0) -> float:
    """Seconds from spawning `command` in a pty to `marker` appearing in its (ANSI-stripped) output."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env,
                               start_new_session=True, close_fds=True)
    os.close(follower)
    seen = b""
    elapsed = float("nan")
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.05)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            seen += chunk
            if marker in ANSI.sub(b"", seen).replace(b"\r", b""):
                elapsed = time.perf_counter() - started
                break
    finally:
        try:
            os.write(leader, b"\x11")  # ctrl+q: let the app restore the terminal and stop its server
            process.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(leader)
    if elapsed != elapsed:
        tail = ANSI.sub(b"", seen)[-400:].decode(errors="replace")
        raise RuntimeError(f"{command[0]}: no first frame within {timeout:.0f} s; output ended with: {tail!r}")
    return elapsed


def measure(label: str, command: list[str], marker: bytes, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="abi-startup-") as home:
            env = {**os.environ, "ABI_HOME": home, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS),
                   "LINES": str(ROWS)}
            env.pop("TEXTUAL", None)
            times.append(first_paint(command, marker, env))
    print(f"{label:<22} median {statistics.median(times):.3f} s   min {min(times):.3f}   max {max(times):.3f}   "
          f"({runs} runs)")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds allowed for the first frame")
    args = parser.parse_args(argv)

    abi = [sys.executable, "-m", "abi_tui.cli", "dash"]
    baseline = measure("bare Textual app", [sys.executable, "-c", BASELINE_APP], b"5 Server", args.runs)
    dash = measure("abi dash", abi, b"5 Server", args.runs)
    ratio = statistics.median(dash) / statistics.median(baseline)
    verdict = "within" if statistics.median(dash) <= args.budget else "OVER"
    print(f"abi dash / baseline: {ratio:.2f}x; first frame {verdict} the {args.budget:.1f} s budget")
    return 0 if verdict == "within" else 1


if __name__ == "__main__":
    sys.exit(main())
