"""The persona router: which of Abi, Abbey and Aviva answers a message.

Precedence:
1. a policy violation, or a question about the assistant's own routing, personas or safety: Abi
   (a message about self-harm is a flagged violation too, but Abbey answers it, with crisis
   resources first);
2. distress or confusion, a wish to learn, personal topics, greetings and small talk: Abbey;
3. a technical task or question from a user who is not in distress: Aviva.

What decides is a trained classifier (`classifier.py`: hashed words, character n-grams and concept
classes, and, when the packaged sentence encoder is present, the message's sentence embedding and
its nearness to the labelled corpus; two logistic-regression heads), blended with the hand-made lexicon's scores
(`lexicon_scores.py`, weight `LEXICON_WEIGHT`), and rules where rules are right: a few
high-precision patterns decide a violation outright (`data/policy.toml`: `rm -rf /`, a fork
bomb), as does the lexicon's own policy flag; a violation is decided before anything else (no
`@persona` prefix, persona chosen in the UI or continuity can route around the moderator); an explicit choice otherwise wins; the previous persona gets `HYSTERESIS` added to
its score, and a bare follow-up ("and the second one?") stays with it. Ties go to Abbey. `docs/ROUTER.md`
describes the corpus the classifier is trained on and its held-out figures.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from abi_tui.errors import InvalidRequest
from abi_tui.personas.catalogue import AUTO, DISPLAY_NAMES, PERSONA_IDS
from abi_tui.personas.classifier import (
    CONTENTLESS,
    DATA,
    Prediction,
    RouterModel,
    concept_hits,
    default_model,
)
from abi_tui.personas.lexicon_scores import DISTRESS_NOUNS, Tally, distribution, lexicon_tally
from abi_tui.personas.readable import decoded, plain
from abi_tui.personas.signals import Signals, analyze

log = logging.getLogger(__name__)

# A text's unit-length sentence embedding (the shared encoder's `encode`), or None.
Embed = Callable[[str], "np.ndarray | None"]

HYSTERESIS = 0.2
LEXICON_WEIGHT = 0.3  # the lexicon's share of the persona scores (tuned on the dev split)
FOLLOW_UP_WORDS = 6  # a message this short with no topic of its own continues the conversation
POLICY_PATH = DATA / "policy.toml"
SELF_HARM = "self_harm"
_TIE_ORDER = {"abbey": 2, "abi": 1, "aviva": 0}  # ties go to Abbey
_ROUTE_PERSONA = {"meta": "abi", "abbey": "abbey", "aviva": "aviva"}

# The items of a lexicon reason's quote: "('a', 'b')". An item opens after "(" or ", ", so an
# apostrophe in the prose before the quote ("the assistant's") does not open one.
_QUOTED_RE = re.compile(r"(?:(?<=\()|(?<=, ))'(.+?)'(?=, '|\))")
_OVERRIDE_RE = re.compile(r"^\s*@(abi|abbey|aviva)(?![\w-])[\s,:;.!?\-]*", re.I)

_WHAT = {
    "abi": "a question about the assistant's routing, personas or safety",
    "aviva": "a technical task or question",
}
_ABBEY_WHAT = {
    "distressed": "distress",
    "confused": "confusion",
    "curious": "a wish to understand",
    "upbeat": "good spirits or small talk",
    "neutral": "a personal or everyday topic",
}


@dataclass
class RoutingDecision:
    persona: str
    confidence: float
    reason: str
    signals: dict[str, Any]
    scores: dict[str, float]
    policy: str | None = None  # the policy rule id a violation breaks (self_harm included)

    def to_dict(self) -> dict[str, Any]:
        return {
            "persona": self.persona,
            "confidence": self.confidence,
            "reason": self.reason,
            "signals": self.signals,
            "scores": dict(self.scores),
            "policy": self.policy,
        }

    def summary(self) -> dict[str, Any]:
        """The short form carried by `abi.start` events: persona, confidence, reason, policy."""
        return {"persona": self.persona, "confidence": self.confidence, "reason": self.reason,
                "policy": self.policy}


@dataclass(frozen=True, slots=True)
class PolicyPattern:
    rule: str
    what: str
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class PolicyRules:
    names: dict[str, str]  # rule id -> what it is about, for reasons
    patterns: tuple[PolicyPattern, ...]
    lexicon_categories: dict[str, str]  # signals.py's policy category -> rule id

    def match(self, text: str) -> tuple[PolicyPattern, str] | None:
        for pattern in self.patterns:
            found = pattern.regex.search(text)
            if found:
                return pattern, " ".join(found.group(0).split())
        return None


@lru_cache(maxsize=1)
def policy_rules() -> PolicyRules:
    with POLICY_PATH.open("rb") as f:
        data = tomllib.load(f)
    patterns = tuple(PolicyPattern(p["rule"], p["what"], re.compile(p["regex"], re.I))
                     for p in data.get("patterns", []))
    return PolicyRules(dict(data["rules"]), patterns, dict(data.get("lexicon_categories", {})))


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


def _checked(embed: Embed | None, text: str, dim: int | None, what: str, fallback: str,
             ) -> np.ndarray | None:
    """`embed(text)` as a finite `dim`-d vector, or None (logged) when it fails or does not fit."""
    if embed is None or dim is None:
        return None
    try:
        vector = embed(text)
    except Exception:  # the embedders are optional; a broken one must not stop routing
        log.exception("%s failed; %s", what, fallback)
        return None
    if vector is None:
        return None
    vector = np.asarray(vector, dtype=np.float32).ravel()
    if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
        log.warning("a %s %s for a %d-d router; %s", vector.shape, what, dim, fallback)
        return None
    return vector


class PersonaRouter:
    """Routes a message to a persona in well under a millisecond, given its sentence embedding.

    `embed`, when given, returns the message's sentence embedding (the shared encoder, which
    memory then finds in its cache); the classifier's semantic head reads it. `embed_tuned`
    returns the tuned encoder's state, whose classifier is blended in. A failing or mismatched
    embedder is logged and ignored: the words-only head (or the semantic head alone) routes.
    """

    def __init__(self, *, embed: Embed | None = None, embed_tuned: Embed | None = None,
                 hysteresis: float = HYSTERESIS, model: RouterModel | None = None) -> None:
        self.embed = embed
        self.embed_tuned = embed_tuned
        self.hysteresis = hysteresis
        self.model = model or default_model()
        self.rules = policy_rules()

    # -- public API -----------------------------------------------------------------------

    def route(self, content: str, *, previous: str | None = None, override: str | None = None,
              ) -> RoutingDecision:
        """Decide who answers `content`. A leading @persona in the content is an override."""
        return self.route_message(content, previous=previous, override=override)[0]

    def route_message(self, content: str, *, previous: str | None = None,
                      override: str | None = None) -> tuple[RoutingDecision, str]:
        """The decision and the content with any leading @persona removed (what the model sees).

        `override` is the UI's choice (a persona id, or None/"auto" for routing); a leading
        @persona in the content takes precedence over it. Unknown ids raise InvalidRequest.
        """
        content = content if isinstance(content, str) else str(content)
        inline, cleaned = split_override(content)
        forced = inline or _check_persona(override, "override")
        previous = _check_persona(previous, "previous")
        text = plain(cleaned)  # what routing reads: invisible and look-alike characters undone
        sig, pred = self._read(text)
        signals = sig.to_dict()
        signals["override"] = forced
        signals["previous"] = previous
        signals["classifier"] = {k: round(v, 3) for k, v in pred.routes.items()}
        signals["classifier_input"] = ("words, meaning and the tuned encoder" if pred.tuned else
                                       "words and meaning" if pred.semantic else "words")
        signals["policy"] = None
        tally = lexicon_tally(sig, text)
        learned = _persona_scores(pred)
        lexicon = distribution(tally.scores())
        scores = {p: (1 - LEXICON_WEIGHT) * learned[p] + LEXICON_WEIGHT * lexicon[p]
                  for p in PERSONA_IDS}

        read = decoded(text)
        violation = self._violation(text, pred, sig) if read == text else \
            self._disguised_violation(text, read)
        if violation is not None:
            return self._violation_decision(violation, forced, inline, signals, scores), cleaned

        if forced:
            if inline:
                reason = f"{DISPLAY_NAMES[forced]}: forced by the @{forced} prefix, not routed."
            else:
                reason = f"{DISPLAY_NAMES[forced]}: selected for this chat, not routed."
            return RoutingDecision(forced, 1.0, reason, signals, _rounded(scores)), cleaned

        base_winner = _winner(scores)
        lexicon_tipped = base_winner != _winner(learned)
        if previous:
            scores[previous] += self.hysteresis
            if _is_bare_follow_up(text):
                # "and the second one?" says nothing the classifier can read: it belongs to
                # the conversation, so the previous persona leads whatever the priors say.
                scores[previous] = max(scores[previous], max(scores.values()) + 0.01)
        winner = _winner(scores)
        words = pred.evidence({"abi": "meta"}.get(winner, winner))
        signals["evidence"]["classifier"] = list(words)
        tipped_by = "continuity" if winner != base_winner else None
        if lexicon_tipped and not tipped_by:
            words = _lexicon_words(tally, winner) or words
        reason = self._reason(winner, words, sig, tipped_by, previous)
        confidence = round(scores[winner] / sum(scores.values()), 3)
        return RoutingDecision(winner, confidence, reason, signals, _rounded(scores)), cleaned

    # -- policy ---------------------------------------------------------------------------

    def _read(self, text: str) -> tuple[Signals, Prediction]:
        embedding = self._embedding(text)
        tuned = self._tuned_state(text) if embedding is not None else None
        return analyze(text), self.model.predict(text, embedding, tuned)

    def _disguised_violation(self, text: str, read: str) -> tuple[str, list[str], float, str] | None:
        """Whether a message with leetspeak or spelled-out letters ("m3th", "k i l l") is a
        violation, judged on its decoded reading (56 of the corpus's 13,499 messages). Only this is
        asked of that reading: it garbles ordinary names like "k8s" for routing. The reading
        replaces the message as written here, since letters that look disguised are, in the
        corpus, far more often in violations than not: benign messages written in leetspeak
        would otherwise be refused for how they look."""
        matched = self.rules.match(text)
        if matched is not None:
            pattern, found = matched
            return pattern.rule, [found], 1.0, pattern.what
        sig, pred = self._read(read)
        violation = self._violation(read, pred, sig)
        if violation is None:
            return None
        rule, words, confidence, how = violation
        return rule, words, confidence, f"{how}, read through its disguise" if how else \
            "read through its disguise"

    def _violation(self, text: str, pred: Prediction, sig: Signals,
                   ) -> tuple[str, list[str], float, str] | None:
        """(rule id, evidence, confidence, how) when the message breaks a policy rule."""
        matched = self.rules.match(text)
        if matched is not None:
            pattern, found = matched
            return pattern.rule, [found], 1.0, pattern.what
        p_policy = pred.routes["policy"]
        if p_policy < self.model.threshold(pred.semantic):
            flag = sig.policy if self.model.uses_lexicon_flag(pred.semantic) else None
            rule = self.rules.lexicon_categories.get(flag.category) if flag else None
            if flag is None or rule is None:
                return None
            return rule, list(flag.evidence), 0.9, ""
        rule = max(pred.rules, key=lambda r: pred.rules[r])
        return rule, pred.evidence(rule) or pred.evidence("policy"), round(p_policy, 3), ""

    def _violation_decision(self, violation: tuple[str, list[str], float, str],
                            forced: str | None, inline: bool, signals: dict[str, Any],
                            scores: dict[str, float]) -> RoutingDecision:
        rule, words, confidence, how = violation
        persona = "abbey" if rule == SELF_HARM else "abi"
        signals["policy"] = {"category": rule, "evidence": list(words)}
        name = self.rules.names.get(rule, rule)
        evidence = _quote(words)
        shown = f"{how}, {evidence}" if how else evidence
        if persona == "abbey":
            reason = (f"Abbey: a message about {name} ({shown}) is always Abbey's to answer, "
                      "with crisis resources first")
        else:
            reason = f"Abi: a policy violation, {name} ({shown}), is always Abi's to answer"
        if forced and forced != persona:
            by = f"the @{forced} prefix" if inline else f"choosing {DISPLAY_NAMES[forced]}"
            reason += f"; {by} does not bypass moderation"
        return RoutingDecision(persona, confidence, reason + ".", signals, _rounded(scores),
                               policy=rule)

    # -- scoring --------------------------------------------------------------------------

    def _embedding(self, text: str) -> np.ndarray | None:
        semantic = self.model.semantic
        return _checked(self.embed, text, semantic.dim if semantic else None,
                        "sentence embedding", "routing on words only")

    def _tuned_state(self, text: str) -> np.ndarray | None:
        tuned = self.model.tuned
        return _checked(self.embed_tuned, text, tuned.dim if tuned else None,
                        "tuned encoder state", "routing without it")

    def _reason(self, winner: str, words: list[str], sig: Signals, tipped_by: str | None,
                previous: str | None) -> str:
        name = DISPLAY_NAMES[winner]
        what = _what(winner, sig)
        if tipped_by == "continuity" and previous:
            reason = (f"{name}: continuity with the previous {DISPLAY_NAMES[previous]} answer "
                      f"tipped a close call")
        elif not words:
            return f"{name} by default: no technical, emotional or policy signal stood out."
        else:
            return f"{name}: {what} ({_quote(words)}) decided."
        if words:
            reason += f" towards {what} ({_quote(words)})"
        return reason + "."


def _what(persona: str, sig: Signals) -> str:
    """What kind of message it is, in the words the signals allow."""
    if persona == "abbey":
        label, _ = sig.distress
        if sig.tone in ("distressed", "confused") and label in DISTRESS_NOUNS:
            return DISTRESS_NOUNS[label]
        return _ABBEY_WHAT[sig.tone]
    if persona == "aviva":
        if "code_request" in sig.intents:
            return "a code request"
        if "command" in sig.intents:
            return "a shell command"
    return _WHAT[persona]


def _lexicon_words(tally: Tally, persona: str) -> list[str]:
    """The words behind the lexicon's strongest contribution to a persona."""
    best = max((c for c in tally.items if c.persona == persona and c.delta > 0
                and c.signal != "default"), key=lambda c: c.delta, default=None)
    return _QUOTED_RE.findall(best.text) if best else []


def _is_bare_follow_up(text: str) -> bool:
    if len(text.split()) > FOLLOW_UP_WORDS:
        return False
    return not set(concept_hits(text)) - CONTENTLESS


def _persona_scores(pred: Prediction) -> dict[str, float]:
    """The non-policy routes as persona scores summing to 1."""
    total = sum(pred.routes[r] for r in _ROUTE_PERSONA) or 1.0
    return {_ROUTE_PERSONA[r]: pred.routes[r] / total for r in _ROUTE_PERSONA}


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
    """Route with a shared router on words only (convenience for scripts and tests)."""
    global _DEFAULT_ROUTER
    if _DEFAULT_ROUTER is None:
        _DEFAULT_ROUTER = PersonaRouter()
    return _DEFAULT_ROUTER.route(content, previous=previous, override=override)
