"""Kept prompt prefixes moved to host memory when their sequence is needed for another prompt.

A finished sequence keeps its KV cells so that the next prompt starting the same way (a chat's
next turn, a repeated request) prefills only what is new. With more conversations than
sequences, a new prompt takes over a kept sequence, and the prompt that sequence held would have
to be prefilled again when it comes back; as llama-server's `--cache-ram`, its cells are saved
here first (`llama_state_seq_get_data`) and restored into a free sequence when a prompt starts
with them. Least recently saved or used first out, within a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class SavedPrefix:
    tokens: list[int]
    state: Any  # llama.cpp's serialised sequence state: a ctypes byte array, len() its size


class SavedPrefixes:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, SavedPrefix] = OrderedDict()
        self._next_key = 0
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, tokens: list[int], state: Any) -> None:
        """Save a prefix; saved ones it extends are dropped (it holds them), and the least
        recently used ones go until the budget holds."""
        if len(state) > self.budget_bytes:
            return
        for key, entry in list(self._entries.items()):
            if len(entry.tokens) <= len(tokens) and tokens[: len(entry.tokens)] == entry.tokens:
                self._drop(key)
        while self._entries and self.bytes + len(state) > self.budget_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[self._next_key] = SavedPrefix(list(tokens), state)
        self._next_key += 1
        self.bytes += len(state)

    def best(self, prompt: list[int], better_than: int) -> tuple[int, int] | None:
        """(key, shared tokens) of the saved prefix sharing most with `prompt`, if it shares
        more than `better_than` tokens and at least half of the saved prefix or of the prompt
        (restoring costs in proportion to the saved tokens: a shared first word is not worth it)."""
        found = None
        for key, entry in self._entries.items():
            common = common_prefix(entry.tokens, prompt)
            if common > better_than and 2 * common >= min(len(entry.tokens), len(prompt)):
                found, better_than = (key, common), common
        return found

    def take(self, key: int) -> SavedPrefix:
        """Remove and return a saved prefix (it goes back into a sequence)."""
        entry = self._entries[key]
        self._drop(key)
        return entry

    def _drop(self, key: int) -> None:
        self.bytes -= len(self._entries.pop(key).state)


def common_prefix(cached: list[int] | tuple[int, ...], prompt: list[int]) -> int:
    common = 0
    for a, b in zip(cached, prompt):
        if a != b:
            break
        common += 1
    return common
