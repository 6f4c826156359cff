"""Words as the lexical index sees them: lower case, stop words out, a light stem, synonyms merged.

The same function normalises stored items and queries, so "What is my dog called?" and "My dog's
name is Biscuit" meet on `dog` and `nam`. The stem is deliberately crude (suffixes off, a final
`e` off, a doubled consonant undone): it only has to map a word's forms onto one key, never to
produce a real word. Stop words and synonyms are data (memory/data/).
"""

from __future__ import annotations

import math
import re
from functools import cache
from importlib import resources

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SUFFIXES = ("ies", "ing", "ed", "es", "s")
_KEEP_S = ("ss", "us", "is", "os")


def _lines(name: str) -> list[str]:
    text = resources.files("abi_tui.memory").joinpath("data", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@cache
def stop_words() -> frozenset[str]:
    return frozenset(word for line in _lines("stopwords.txt") for word in line.split())


def stem(word: str) -> str:
    if len(word) > 3 and not word.isdigit():
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                if suffix == "s" and word.endswith(_KEEP_S):
                    break
                word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
                if suffix in ("ing", "ed") and len(word) > 3 and word[-1] == word[-2] \
                        and word[-1] not in "lsz":
                    word = word[:-1]  # running -> runn -> run
                break
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


@cache
def synonyms() -> dict[str, str]:
    canonical: dict[str, str] = {}
    for line in _lines("synonyms.txt"):
        words = [stem(w) for w in line.lower().split()]
        for word in words[1:]:
            canonical.setdefault(word, words[0])
    return canonical


def terms(text: str) -> list[str]:
    """The index terms of a text, in order, repeats kept (BM25 counts them)."""
    stops, canon = stop_words(), synonyms()
    out = []
    for word in WORD.findall(text.lower()):
        word = word.split("'", 1)[0]  # dog's -> dog
        if word in stops or len(word) < 2:
            continue
        word = stem(word)
        out.append(canon.get(word, word))
    return out


def match_query(query_terms: list[str]) -> str | None:
    """An FTS5 query that matches any of the terms (each quoted: terms are never operators)."""
    unique = list(dict.fromkeys(query_terms))
    return " OR ".join(f'"{t}"' for t in unique) if unique else None


def idf(doc_freq: int, n_docs: int) -> float:
    """BM25's inverse document frequency (always positive)."""
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def overlap(query_terms: list[str], item_terms: set[str], weights: dict[str, float]) -> float:
    """The share of the query's weight (idf) that the item contains: 0..1, comparable across
    queries and store sizes, unlike a raw BM25 score."""
    unique = set(query_terms)
    total = sum(weights.get(t, 0.0) for t in unique)
    if total <= 0:
        return 0.0
    return sum(weights.get(t, 0.0) for t in unique if t in item_terms) / total
