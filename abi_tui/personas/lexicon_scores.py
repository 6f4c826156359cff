"""The hand-made lexicon's persona scores (`signals.py`): the router's second opinion.

This is the scoring the router used before it had a classifier. Its weighted contributions
(technical terms, distress, learning, greetings, a question about the assistant) each remember
the words that caused them. The router blends these scores with the classifier's, where they
help most on what a small corpus teaches poorly: negation ("I'm not confused, just..."),
sarcasm, and distress voiced in technical words.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from abi_tui.personas.catalogue import DEFAULT_PERSONA, PERSONA_IDS
from abi_tui.personas.signals import Signals

BASE_ABBEY = 0.3
SOFTMAX_T = 0.25  # the scores' temperature when they are turned into a distribution

_VOCATIVE_RE = re.compile(r"^\s*(abi|abbey|aviva)\s*[,:!\-]", re.I)

DISTRESS_NOUNS = {
    "frustrated": "frustration",
    "confused": "confusion",
    "stressed": "stress",
    "anxious": "anxiety",
    "sad": "sadness",
    "disappointed": "disappointment",
    "overwhelmed": "feeling overwhelmed",
}


@dataclass(slots=True)
class Contribution:
    persona: str
    delta: float
    signal: str
    text: str


@dataclass
class Tally:
    items: list[Contribution] = field(default_factory=list)

    def add(self, persona: str, delta: float, signal: str, text: str) -> None:
        self.items.append(Contribution(persona, delta, signal, text))

    def scores(self, *, skip: str | None = None) -> dict[str, float]:
        out = dict.fromkeys(PERSONA_IDS, 0.0)
        for c in self.items:
            if c.signal != skip:
                out[c.persona] += c.delta
        return out


def _quote(items: list[str] | None, limit: int = 3) -> str:
    return ", ".join(f"'{item}'" for item in (items or [])[:limit])


def distribution(scores: dict[str, float]) -> dict[str, float]:
    """The scores as a probability distribution over the personas (a softmax)."""
    top = max(scores.values())
    weights = {p: math.exp((s - top) / SOFTMAX_T) for p, s in scores.items()}
    total = sum(weights.values())
    return {p: w / total for p, w in weights.items()}


def lexicon_tally(sig: Signals, content: str, previous: str | None = None) -> Tally:
    t = Tally()
    ev = sig.evidence
    intents = sig.intents
    # Abbey is the default for a new conversation. In a running one the default is its
    # persona: a bare follow-up ("and the second one?") stays where it was, on top of
    # the hysteresis bonus added in route().
    if previous is None or previous == DEFAULT_PERSONA:
        t.add(DEFAULT_PERSONA, BASE_ABBEY, "default", "Abbey is the default")
    else:
        t.add(DEFAULT_PERSONA, BASE_ABBEY / 3, "default", "Abbey is the default")
        t.add(previous, BASE_ABBEY / 3, "default", "the conversation's persona")

    # Abi: questions about the assistant itself. A persona's name used to address her at
    # the start ("Aviva, how do I...") is a nudge towards her, not a question about her.
    vocative = _VOCATIVE_RE.match(content)
    meta = list(ev.get("meta", []))
    if vocative:
        name = vocative.group(1).lower()
        meta = [m for m in meta if m != name]
        t.add(name, 0.3, "vocative", f"being addressed by name ('{vocative.group(1)}')")
    if meta:
        t.add("abi", 1.5, "meta",
              f"a question about the assistant's routing, personas or safety ({_quote(meta)})")

    # Aviva: technical work.
    tech = sig.technical
    task = any(k in intents for k in ("code_request", "command", "question", "request",
                                      "debugging", "direct"))
    if tech >= 0.25:
        t.add("aviva", 0.2 + 0.5 * tech, "technical",
              f"technical terms ({_quote(ev.get('technical'))})")
    if "code_request" in intents:
        t.add("aviva", 0.2, "code_request", f"a code request ({_quote(ev['code_request'])})")
    if "command" in intents:
        t.add("aviva", 0.3, "command", f"a shell command ({_quote(ev['command'])})")
    if "debugging" in intents and tech >= 0.25:
        t.add("aviva", 0.15 * intents["debugging"], "debugging",
              f"debugging ({_quote(ev['debugging'])})")
    if "direct" in intents:
        t.add("aviva", 0.3 * intents["direct"], "direct",
              f"a request for a direct answer ({_quote(ev['direct'])})")

    # Abbey: distress, confusion, learning, people.
    label, distress = sig.distress
    if label is not None and distress >= 0.4:
        text = f"{DISTRESS_NOUNS[label]} ({_quote(ev.get(label))})"
        t.add("abbey", 0.35 + 0.25 * distress, label, text)
        t.add("aviva", -0.1, label, text)
    frustration = sig.emotions.get("frustrated", 0.0)
    if frustration >= 0.4:
        t.add("abbey", 0.4, "frustrated", f"frustration ({_quote(ev.get('frustrated'))})")
    if sig.urgency > 0.7:
        t.add("abbey", 0.3, "urgency", f"urgency ({_quote(ev.get('urgency'))})")
    if sig.learning >= 0.3:
        t.add("abbey", 0.45 * sig.learning, "learning",
              f"a wish to understand ({_quote(ev.get('learning'))})")
    social = [(intents.get(k, 0.0), k) for k in ("greeting", "farewell", "thanks", "ack")]
    strength, kind = max(social)
    if strength > 0:
        # Pleasantries are the message only when nothing else is asked of us.
        weight = (0.15 if task or tech >= 0.5 else 0.35) * strength
        noun = {"greeting": "a greeting", "farewell": "a farewell", "thanks": "thanks",
                "ack": "an acknowledgement"}[kind]
        t.add("abbey", weight, kind, f"{noun} ({_quote(ev.get(kind))})")
    if sig.personal > 0:
        t.add("abbey", 0.35 * sig.personal, "personal",
              f"a personal topic ({_quote(ev.get('personal'))})")
    upbeat = max(sig.emotions.get("happy", 0.0), sig.emotions.get("excited", 0.0))
    if upbeat >= 0.4:
        words = ev.get("happy", []) + ev.get("excited", [])
        t.add("abbey", 0.15 + 0.1 * upbeat, "upbeat", f"good spirits ({_quote(words)})")
    return t
