"""What a grammar costs per token: decode tok/s of one stream on `abi dash --serve`,
unconstrained against a JSON schema (response_format) and a forced tool call (tool_choice
"required"), same model, same prompt, same server, interleaved rounds, in one run.

gemma-3 270M is a base model: the schema runs on /v1/completions; the tool call needs a chat
template, and the GGUF's own is used. The grammar sampler checks candidate tokens against the
grammar's stacks every step, so its cost grows with the vocabulary (262k tokens on gemma).
Usage: python benchmarks/grammar_speed.py [--rounds 3] [--threads 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from harness import abi_server, gemma_path

PROMPT = "Here is the record of the new employee, as JSON:\n"
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer", "minimum": 18, "maximum": 99},
    "team": {"enum": ["sales", "research", "support"]},
    "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 5}},
    "required": ["name", "age", "team", "skills"]}
TOOL = {"type": "function", "function": {"name": "add_employee", "parameters": SCHEMA}}


def request(kind: str, max_tokens: int, seed: int) -> tuple[str, dict]:
    if kind == "unconstrained":
        path, body = "/v1/completions", {"prompt": PROMPT}
    elif kind == "json_schema":
        path, body = "/v1/completions", {"prompt": PROMPT, "response_format": {
            "type": "json_schema", "json_schema": {"name": "employee", "schema": SCHEMA}}}
    else:
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}],
                                              "tools": [TOOL], "tool_choice": "required",
                                              "parallel_tool_calls": False}
    body.update(max_tokens=max_tokens, temperature=0.8, seed=seed, stream=True,
                stream_options={"include_usage": True})
    return path, body


def decode_rate(url: str, kind: str, max_tokens: int, seed: int) -> tuple[float, int]:
    """Decode tok/s of one streamed request, from its first generated chunk to its last (the
    prompt's prefill is left out), and its token count from the server's usage."""
    import httpx

    path, body = request(kind, max_tokens, seed)
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + path, json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
                    last = time.perf_counter()
                    first = first or last
    if not first or last <= first or tokens < 2:
        return 0.0, tokens
    return (tokens - 1) / (last - first), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    model = args.model or gemma_path()
    kinds = ("unconstrained", "json_schema", "tool_call")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    counts: dict[str, list[int]] = {k: [] for k in kinds}
    with abi_server(model, threads=args.threads, parallel=1) as url:
        for kind in kinds:  # warm-up: the prompt's cells, the grammar code paths
            decode_rate(url, kind, 8, 0)
        for round_ in range(args.rounds):
            for kind in kinds:  # interleaved: machine drift lands on all three alike
                rate, tokens = decode_rate(url, kind, args.tokens, round_ + 1)
                rates[kind].append(rate)
                counts[kind].append(tokens)
    base = statistics.median(rates["unconstrained"])
    print(f"\n{model.name}, threads={args.threads}, up to {args.tokens} tokens, median of {args.rounds} rounds")
    print(f"{'generation':<16}{'tokens':>8}{'decode tok/s':>14}{'vs unconstrained':>20}")
    for kind in kinds:
        rate = statistics.median(rates[kind])
        print(f"{kind:<16}{statistics.median(counts[kind]):>8.0f}{rate:>14.1f}{rate / base if base else 0:>19.2f}x")


if __name__ == "__main__":
    main()
