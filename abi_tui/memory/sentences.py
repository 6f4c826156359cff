"""What of a turn is worth recalling: one item per sentence or short span.

A whole answer embedded as one vector buries a short fact in it, and a user's question stored as
a memory comes back as noise ("What is my dog's name?" recalled for an unrelated question). So:
- a user's statements are stored one sentence each (kind `fact`); their questions and
  requests are not;
- an answer is stored in spans of at most `MAX_WORDS` words, sentence boundaries kept (kind
  `answer`); code blocks are left out (they are recalled badly and cost many tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from abi_tui.memory.lexical import terms

MAX_WORDS = 40
MIN_TERMS = 2  # "Thanks!" or "OK, sure." is not a memory
_CODE = re.compile(r"```.*?(```|$)", re.S)
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_QUESTION_START = re.compile(
    r"^(?:what|who|whom|whose|which|where|when|why|how|is|are|am|was|were|do|does|did|can|could|"
    r"will|would|should|shall|may|might|have|has|had)\b", re.I)
# Requests ("Write a haiku about rain.") ask for something; they state nothing about the user.
_REQUEST_START = re.compile(
    r"^(?:please|tell|write|explain|give|show|list|help|describe|summari[sz]e|translate|make|"
    r"create|generate|find|suggest|compare|define|let's|lets)\b", re.I)


@dataclass(frozen=True)
class Piece:
    kind: str  # fact | answer
    text: str


def split_sentences(text: str) -> list[str]:
    text = _CODE.sub("\n", text)
    out = []
    for part in _BOUNDARY.split(text):
        part = _LIST_MARK.sub("", part.strip().strip("#>").strip())
        if part:
            out.append(part)
    return out


def is_question(sentence: str) -> bool:
    return sentence.rstrip().endswith("?") or bool(_QUESTION_START.match(sentence.lstrip()))


def _spans(sentence: str) -> list[str]:
    """A sentence longer than MAX_WORDS cut at clause marks, else at MAX_WORDS."""
    words = sentence.split()
    if len(words) <= MAX_WORDS:
        return [sentence]
    spans, current = [], []
    for word in words:
        current.append(word)
        if len(current) >= MAX_WORDS or (len(current) >= MAX_WORDS // 2 and word[-1] in ",;:"):
            spans.append(" ".join(current))
            current = []
    if current:
        spans.append(" ".join(current))
    return spans


def pieces(role: str, text: str) -> list[Piece]:
    """The items to store for one message."""
    out: list[Piece] = []
    for sentence in split_sentences(text):
        if role == "user" and (is_question(sentence) or _REQUEST_START.match(sentence)):
            continue
        for span in _spans(sentence):
            if len(set(terms(span))) >= MIN_TERMS:
                out.append(Piece("fact" if role == "user" else "answer", span))
    return out
