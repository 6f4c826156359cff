"""The persona router (SPEC §5.2): which of Abi, Abbey and Aviva answers a message.

Precedence, which the weights below are tuned to follow:
1. a policy violation, or a question about the assistant's own routing, personas or safety: Abi;
2. distress or confusion, a wish to learn, personal topics, greetings and small talk: Abbey;
3. a technical task or question from a user who is not in distress: Aviva.

A policy violation is decided outright (no override, continuity or embedding can route around
the moderator). Everything else is a sum of weighted contributions per persona, each of which
remembers the words that caused it, so the reason names the signals that decided. Abbey starts
with a small lead, so a message with no signal at all, and any tie, goes to her.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from abi_tui.errors import InvalidRequest
from abi_tui.personas.catalogue import AUTO, DEFAULT_PERSONA, DISPLAY_NAMES, PERSONA_IDS
from abi_tui.personas.signals import Signals, analyze

log = logging.getLogger(__name__)

# A per-persona similarity in [0, 1] (cosine to each persona's exemplars, say) for a text.
Similarity = Callable[[str], Mapping[str, float] | None]

HYSTERESIS = 0.2
BASE_ABBEY = 0.3
_TIE_ORDER = {"abbey": 2, "abi": 1, "aviva": 0}  # ties go to Abbey
_SOFTMAX_T = 0.25

_OVERRIDE_RE = re.compile(r"^\s*@(abi|abbey|aviva)(?![\w-])[\s,:;.!?\-]*", re.I)
_VOCATIVE_RE = re.compile(r"^\s*(abi|abbey|aviva)\s*[,:!\-]", re.I)

_DISTRESS_NOUNS = {
    "frustrated": "frustration",
    "confused": "confusion",
    "stressed": "stress",
    "anxious": "anxiety",
    "sad": "sadness",
    "disappointed": "disappointment",
    "overwhelmed": "feeling overwhelmed",
}


@dataclass
class RoutingDecision:
    persona: str
    confidence: float
    reason: str
    signals: dict[str, Any]
    scores: dict[str, float]
    policy: str | None = None  # the rule a policy violation breaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "persona": self.persona,
            "policy": self.policy,
            "confidence": self.confidence,
            "reason": self.reason,
            "signals": self.signals,
            "scores": dict(self.scores),
        }

    def summary(self) -> dict[str, Any]:
        """The short form carried by `abi.start` events: persona, confidence, reason."""
        return {"persona": self.persona, "confidence": self.confidence, "reason": self.reason}


@dataclass(slots=True)
class _Contribution:
    persona: str
    delta: float
    signal: str
    text: str


@dataclass
class _Tally:
    items: list[_Contribution] = field(default_factory=list)

    def add(self, persona: str, delta: float, signal: str, text: str) -> None:
        self.items.append(_Contribution(persona, delta, signal, text))

    def scores(self, *, skip: str | None = None) -> dict[str, float]:
        out = dict.fromkeys(PERSONA_IDS, 0.0)
        for c in self.items:
            if c.signal != skip:
                out[c.persona] += c.delta
        return out


def split_override(content: str) -> tuple[str | None, str]:
    """A leading `@abi`/`@abbey`/`@aviva` and the content without it (case-insensitive)."""
    match = _OVERRIDE_RE.match(content)
    if not match:
        return None, content
    return match.group(1).lower(), content[match.end():]


def _quote(items: list[str] | None, limit: int = 3) -> str:
    return ", ".join(f"'{item}'" for item in (items or [])[:limit])


def _winner(scores: Mapping[str, float]) -> str:
    return max(PERSONA_IDS, key=lambda p: (round(scores[p], 9), _TIE_ORDER[p]))


def _confidence(scores: Mapping[str, float], winner: str) -> float:
    top = max(scores.values())
    weights = {p: math.exp((s - top) / _SOFTMAX_T) for p, s in scores.items()}
    return round(weights[winner] / sum(weights.values()), 3)


class PersonaRouter:
    """Routes a message to a persona in well under a millisecond (without embeddings).

    `similarity`, when given, is called with the message and returns per-persona similarities
    in [0, 1] (e.g. the best cosine similarity to each persona's exemplars in the vector store);
    they are blended in with `embedding_weight`. A failing hook is logged and ignored: routing
    never fails because of it. Precomputed similarities can also be passed to `route()`.
    """

    def __init__(self, *, similarity: Similarity | None = None, embedding_weight: float = 0.3,
                 hysteresis: float = HYSTERESIS) -> None:
        self.similarity = similarity
        self.embedding_weight = embedding_weight
        self.hysteresis = hysteresis

    # -- public API -----------------------------------------------------------------------

    def route(self, content: str, *, previous: str | None = None, override: str | None = None,
              similarities: Mapping[str, float] | None = None) -> RoutingDecision:
        """Decide who answers `content`. A leading @persona in the content is an override."""
        return self.route_message(content, previous=previous, override=override,
                                  similarities=similarities)[0]

    def route_message(self, content: str, *, previous: str | None = None,
                      override: str | None = None,
                      similarities: Mapping[str, float] | None = None,
                      ) -> tuple[RoutingDecision, str]:
        """The decision and the content with any leading @persona removed (what the model sees).

        `override` is the UI's choice (a persona id, or None/"auto" for routing); a leading
        @persona in the content takes precedence over it. Unknown ids raise InvalidRequest.
        """
        content = content if isinstance(content, str) else str(content)
        inline, cleaned = split_override(content)
        forced = inline or _check_persona(override, "override")
        previous = _check_persona(previous, "previous")
        sig = analyze(cleaned)
        signals = sig.to_dict()
        signals["override"] = forced
        signals["previous"] = previous

        tally = self._tally(sig, cleaned, previous)
        if sig.policy is not None:
            evidence = _quote(list(sig.policy.evidence))
            tally.add("abi", 3.0, "policy",
                      f"a policy violation, {sig.policy.describe()} ({evidence})")
            scores = _rounded(tally.scores())
            reason = f"Abi: {tally.items[-1].text} is always Abi's to answer"
            if forced and forced != "abi":
                by = f"the @{forced} prefix" if inline else f"choosing {DISPLAY_NAMES[forced]}"
                reason += f"; {by} does not bypass moderation"
            rule = {"destructive_command": "destructive_commands", "malware": "malware_intrusion",
                    "personal_data": "privacy_stalking"}.get(sig.policy.category, sig.policy.category)
            return RoutingDecision("abi", max(0.9, _confidence(scores, "abi")), reason + ".",
                                   signals, scores, rule), cleaned

        if forced:
            scores = _rounded(tally.scores())
            if inline:
                reason = f"{DISPLAY_NAMES[forced]}: forced by the @{forced} prefix, not routed."
            else:
                reason = f"{DISPLAY_NAMES[forced]}: selected for this chat, not routed."
            return RoutingDecision(forced, 1.0, reason, signals, scores), cleaned

        if previous:
            tally.add(previous, self.hysteresis, "continuity",
                      f"continuity with the previous {DISPLAY_NAMES[previous]} answer")
        sims = similarities
        if sims is None and self.similarity is not None:
            try:
                sims = self.similarity(cleaned)
            except Exception:  # the hook is optional; a broken one must not stop routing
                log.exception("persona similarity hook failed; routing without embeddings")
                sims = None
        if sims is not None and not isinstance(sims, Mapping):
            log.warning("persona similarities must be a mapping, got %s", type(sims).__name__)
            sims = None
        if sims:
            for persona in PERSONA_IDS:
                value = sims.get(persona)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    value = min(1.0, max(0.0, float(value)))
                    tally.add(persona, self.embedding_weight * value, "embedding",
                              f"embedding similarity {value:.2f}")
            signals["similarities"] = {k: round(float(v), 3) for k, v in sims.items()
                                       if isinstance(v, (int, float)) and math.isfinite(v)}

        raw = tally.scores()
        winner = _winner(raw)
        scores = _rounded(raw)
        reason = self._reason(winner, tally, raw, sig)
        return RoutingDecision(winner, _confidence(raw, winner), reason, signals, scores), cleaned

    # -- scoring --------------------------------------------------------------------------

    def _tally(self, sig: Signals, content: str, previous: str | None) -> _Tally:
        t = _Tally()
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
            text = f"{_DISTRESS_NOUNS[label]} ({_quote(ev.get(label))})"
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

    def _reason(self, winner: str, tally: _Tally, scores: Mapping[str, float],
                sig: Signals) -> str:
        name = DISPLAY_NAMES[winner]
        without = tally.scores(skip="continuity")
        tipped = _winner(without) != winner
        mine = sorted((c for c in tally.items if c.persona == winner and c.delta > 0
                       and c.signal not in ("default", "continuity")), key=lambda c: -c.delta)
        parts: list[str] = []
        for c in mine:
            if c.text not in parts:  # a distress boost and the frustration boost share words
                parts.append(c.text)
        continuity = next((c.text for c in tally.items
                           if c.signal == "continuity" and c.persona == winner), None)
        if continuity and (tipped or not parts):
            parts.insert(0, continuity)
        if not parts:
            reason = f"{name} by default: no technical, emotional or policy signal stood out"
        else:
            reason = f"{name}: " + " and ".join(parts[:2])
            others = [p for p in PERSONA_IDS if p != winner]
            runner = max(others, key=lambda p: scores[p])
            theirs = sorted((c for c in tally.items if c.persona == runner and c.delta >= 0.2
                             and c.signal not in ("default", "continuity")),
                            key=lambda c: -c.delta)
            if theirs and scores[runner] > 0.35:
                reason += f" outweighed {theirs[0].text} for {DISPLAY_NAMES[runner]}"
            else:
                reason += " decided"
        if sig.negated:
            reason += f" ({_quote(sig.negated)} read as negated)"
        return reason + "."


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {p: round(scores[p], 3) for p in PERSONA_IDS}


def _check_persona(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    key = str(value).strip().lower().lstrip("@")
    if key in ("", AUTO):
        return None
    if key not in PERSONA_IDS:
        raise InvalidRequest(
            f"unknown persona {value!r} for {param} (choose one of auto, {', '.join(PERSONA_IDS)})",
            param=param,
        )
    return key


_DEFAULT_ROUTER: PersonaRouter | None = None


def route(content: str, *, previous: str | None = None,
          override: str | None = None) -> RoutingDecision:
    """Route with a shared router without embeddings (convenience for scripts and tests)."""
    global _DEFAULT_ROUTER
    if _DEFAULT_ROUTER is None:
        _DEFAULT_ROUTER = PersonaRouter()
    return _DEFAULT_ROUTER.route(content, previous=previous, override=override)
