"""Signals the persona router reads from a message.

The text is lower-cased and split into words; lexicon entries match whole words and phrases,
never substrings ("good" is not "go", "know" is not "now"). At each position the longest entry
wins, so "ip address" (technical) and "home address" (personal data) never fall back to the bare
word "address", and "stress test" is not stress. Emotions, urgency and learning intent look back
up to four words in the same clause for a negator ("I'm not frustrated"); the look-back stops at
punctuation, at conjunctions and at any other matched phrase, so in "it doesn't work and I'm
frustrated" the frustration stands.

Everything here is plain data plus a few regular expressions that run in linear time: a
typical message is analysed in about a tenth of a millisecond, far under routing's 5 ms budget.
"""

from __future__ import annotations

import bisect
import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DISTRESS = ("frustrated", "confused", "stressed", "anxious", "sad", "disappointed", "overwhelmed")
POSITIVE = ("happy", "excited", "curious")
EMOTIONS = DISTRESS + POSITIVE

# Long messages: only the head and tail are read, so a 1 MiB paste routes in a few ms like
# any message (the request is nearly always at the start or the end of a paste).
MAX_HEAD_CHARS = 6_000
MAX_TAIL_CHARS = 2_000

# --------------------------------------------------------------------------------------------
# Lexicon data: data/lexicon.toml (phrases and weights) and data/words.toml (word lists).
# --------------------------------------------------------------------------------------------

_DATA = Path(__file__).parent / "data"
_WORDS = tomllib.loads((_DATA / "words.toml").read_text(encoding="utf-8"))
NEGATORS = frozenset(_WORDS["negators"])
# Words that end a negator's reach, like punctuation does.
_BREAKERS = frozenset(_WORDS["breakers"])
_INTENSIFIERS = frozenset(_WORDS["intensifiers"])
_POSITIVE_WORDS = frozenset(_WORDS["positive_words"])
_QUESTION_WORDS = frozenset(_WORDS["question_words"])
_OWN = frozenset(_WORDS["own"])
_ALIASES: dict[str, str] = _WORDS["aliases"]
_COMMANDS = frozenset(_WORDS["commands"])
_AMBIGUOUS_COMMANDS = frozenset(_WORDS["ambiguous_commands"])

# Raw-text structure that only code has (case matters for the last two). Every pattern here
# and below runs in linear time: starts are anchored with look-behinds and repeats are
# possessive, so hostile input ("a.a.a.a...") cannot make routing slow.
_STRUCTURE: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("code block", re.compile(r"```"), 1.5),
    ("inline code", re.compile(r"`[^`\n]+`"), 0.6),
    ("a call", re.compile(r"(?<![\w.])[A-Za-z_][\w.]*+\([^()\n]{0,80}\)"), 0.5),
    ("a file name", re.compile(
        r"(?<=\w)\.(?:py|pyi|js|mjs|ts|tsx|jsx|rs|go|c|cc|cpp|h|hpp|java|kt|rb|php|sh|bash|"
        r"zsh|ps1|json|ya?ml|toml|ini|cfg|conf|sql|html|css|scss|lock|gguf|csv|log|xml|env|"
        r"ipynb|so|dll|exe|whl)\b"), 0.6),
    ("a path", re.compile(r"(?:^|\s)(?:~|\.{1,2})?/[\w.-]++(?:/[\w.*-]*+)*+"), 0.5),
    ("a flag", re.compile(r"(?:^|\s)--?[A-Za-z][\w-]*"), 0.4),
    ("an operator", re.compile(r"==|!=|<=|>=|=>|->|::|&&|\|\||\+=|:=|\$\(|\$\{"), 0.4),
    ("a snake_case name", re.compile(r"(?<!\w)[a-z][a-z0-9]*+_[a-z0-9_]*+(?!\w)"), 0.5),
    ("a dunder name", re.compile(r"(?<!\w)__[A-Za-z0-9]\w*?__(?!\w)"), 0.8),
    ("a hex number", re.compile(r"\b0x[0-9a-fA-F]+\b"), 0.4),
    ("a version number", re.compile(r"\bv?\d+\.\d+\.\d+\b"), 0.3),
    ("a size or time unit", re.compile(
        r"\b\d+(?:\.\d+)?\s?(?:ms|µs|us|ns|gb|mb|kb|gib|mib|tb|ghz|mhz|fps|rps|qps|tok/s)\b",
        re.I), 0.4),
    ("a camelCase name", re.compile(r"(?<![\w])[a-z]{2,}+[A-Z][A-Za-z0-9]*+(?!\w)"), 0.5),
    ("an exception name", re.compile(r"(?<![\w])[A-Z][A-Za-z0-9]{0,60}?(?:Error|Exception)(?!\w)"), 0.8),
    ("a C-family language", re.compile(r"(?<![\w+#])(?:c\+\+|c#|f#|\.net)(?![\w+#])", re.I), 1.0),
)

# Commands that destroy a system whatever the context: these alone make a message Abi's.
_DESTRUCTIVE_RE: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The flags group is checked for a recursive flag in code (see _destructive).
    ("rm -rf on a system path", re.compile(
        r"\brm((?:\s++-[\w-]*+)++)\s++[\"']?(?:/\*?|~/?\*?|\$home/?\*?|"
        r"/(?:home|etc|usr|var|boot|bin|sbin|lib|lib64|root|opt|srv|dev|sys|proc)/?\*?)"
        r"[\"']?(?=$|[\s;&|`)])", re.I)),
    ("a fork bomb", re.compile(r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:")),
    ("mkfs on a device", re.compile(r"\bmkfs(?:\.\w+)?\s++(?:-\S++\s++)*+/dev/", re.I)),
    ("dd onto a disk", re.compile(r"\bdd\s[^\n]{0,200}?\bof=/dev/(?:sd|hd|nvme|xvd|vd|disk|mmcblk)", re.I)),
    ("overwriting a disk", re.compile(r">\s*/dev/(?:sd[a-z]|nvme\d|hd[a-z]|disk\d)", re.I)),
    ("shred on a disk", re.compile(r"\bshred\s[^\n]{0,200}?/dev/(?:sd|nvme|hd|disk)", re.I)),
    ("chmod 777 on /", re.compile(r"\bchmod\s+-R\s+[0-7]{3,4}\s+/(?=$|\s)", re.I)),
    ("chown on /", re.compile(r"\bchown\s++-R\s++\S++\s++/(?=$|\s)", re.I)),
    ("formatting C:", re.compile(r"\bformat\s+c:", re.I)),
    ("deleting Windows system files", re.compile(
        r"\b(?:del|rd|rmdir|remove-item)\s[^\n]{0,200}?(?:c:\\windows|system32)", re.I)),
)

_WORD_RE = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[.,;:!?()\[\]{}\n\"]")
_REPEAT_RE = re.compile(r"([a-z])\1{2,}")
_CAPS_RE = re.compile(r"\b[A-Z]{3,}\b")


# --------------------------------------------------------------------------------------------
# Lexicon: an index from first word to entries, longest-first.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tag:
    category: str
    label: str
    weight: float


@dataclass(frozen=True, slots=True)
class Hit:
    """One lexicon match: the words at [start, end) carry `tag`."""

    category: str
    label: str
    weight: float
    start: int
    end: int
    text: str
    negated: bool = False


class Lexicon:
    def __init__(self) -> None:
        self._tags: dict[tuple[str, ...], list[Tag]] = {}
        self._index: dict[str, tuple[list[tuple[list[str], list[Tag]]],
                                     list[tuple[tuple[str, ...], list[Tag]]]]] = {}

    def add(self, category: str, label: str, entries: Iterable[str]) -> None:
        """Entries are "phrase=weight" (data/lexicon.toml explains the phrase syntax)."""
        for item in entries:
            phrase, _, weight = item.strip().rpartition("=")
            words = tuple(_normalise_words(phrase))
            if not words or words[0] in ("*", "..."):
                raise ValueError(f"bad lexicon entry {item!r}")
            self._tags.setdefault(words, []).append(Tag(category, label, float(weight)))

    def build(self) -> Lexicon:
        # Per first word: plain phrases longest-first (the first that matches is the longest),
        # then phrases with wildcards, which need the slower matcher.
        index: dict[str, tuple[list[tuple[list[str], list[Tag]]],
                               list[tuple[tuple[str, ...], list[Tag]]]]] = {}
        for words, tags in self._tags.items():
            plain, wild = index.setdefault(words[0], ([], []))
            if "*" in words or "..." in words:
                wild.append((words, tags))
            else:
                plain.append((list(words), tags))
        for plain, _ in index.values():
            plain.sort(key=lambda e: -len(e[0]))
        self._index = index
        return self

    def scan(self, words: list[str]) -> tuple[list[tuple[int, int, list[Tag]]], list[int]]:
        """Leftmost-longest matches, and for each word the index of the match covering it."""
        matches: list[tuple[int, int, list[Tag]]] = []
        covered = [-1] * len(words)
        i, n = 0, len(words)
        index = self._index
        while i < n:
            entry = index.get(words[i])
            if entry is None:
                i += 1
                continue
            best_end, best_tags = -1, None
            for pattern, tags in entry[0]:
                end = i + len(pattern)
                if words[i:end] == pattern:
                    best_end, best_tags = end, tags
                    break
            for wild_pattern, tags in entry[1]:
                found = _match(words, i, wild_pattern, 0)
                if found is not None and found > best_end:
                    best_end, best_tags = found, tags
            if best_tags is None:
                i += 1
                continue
            for k in range(i, best_end):
                covered[k] = len(matches)
            matches.append((i, best_end, best_tags))
            i = best_end
        return matches, covered


def _match(words: list[str], i: int, pattern: tuple[str, ...], k: int) -> int | None:
    if k == len(pattern):
        return i
    part = pattern[k]
    if part == "...":
        for gap in range(4):
            if i + gap > len(words):
                break
            end = _match(words, i + gap, pattern, k + 1)
            if end is not None:
                return end
        return None
    if i >= len(words) or (part != "*" and words[i] != part):
        return None
    return _match(words, i + 1, pattern, k + 1)


def _normalise_words(text: str) -> list[str]:
    return [w for w, _ in _tokens(text)]


def _tokens(text: str) -> list[tuple[str, int]]:
    """(word, clause number) pairs; punctuation and conjunctions start a new clause."""
    text = _REPEAT_RE.sub(r"\1\1", text.lower().replace("\u2019", "'").replace("\u2018", "'"))
    out: list[tuple[str, int]] = []
    clause = 0
    for raw in _WORD_RE.findall(text):
        if not (raw[0].isalnum() or raw[0] == "_"):
            clause += 1
            continue
        if raw.endswith("'s"):
            raw = raw[:-2]
        word = _ALIASES.get(raw, raw)
        if word in _BREAKERS:
            clause += 1
        out.append((word, clause))
    return out


def _build_lexicons() -> dict[str, Lexicon]:
    """Four lexicons scanned separately, so a phrase in one never hides a word from another."""
    data = tomllib.loads((_DATA / "lexicon.toml").read_text(encoding="utf-8"))
    lexicons: dict[str, Lexicon] = {}
    for name, categories in data.items():
        lexicon = lexicons[name] = Lexicon()
        also: dict[str, str] = categories.get("also", {})
        for category, labels in categories.items():
            if category == "also":
                continue
            for label, entries in labels.items():
                if category in also:  # e.g. debugging phrases are tech phrases too
                    lexicon.add(also[category], also[category], entries)
                lexicon.add(category, label, entries)
    return {name: lexicon.build() for name, lexicon in lexicons.items()}


LEXICONS = _build_lexicons()


# --------------------------------------------------------------------------------------------
# Analysis result.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyFlag:
    """Why a message is a policy violation: the category and the words that decided."""

    category: str
    evidence: tuple[str, ...]

    def describe(self) -> str:
        names = {
            "destructive_command": "a destructive command",
            "malware": "malware",
            "weapons": "weapons",
            "violence": "violence against people",
            "personal_data": "exposing someone's personal data",
            "disable_safety": "a request to disable safety",
        }
        return names.get(self.category, self.category)


@dataclass
class Signals:
    """Everything the router reads from one message; `to_dict()` is what the API shows."""

    words: list[str]
    hits: list[Hit]
    emotions: dict[str, float] = field(default_factory=dict)
    negated: list[str] = field(default_factory=list)
    urgency: float = 0.0
    technical: float = 0.0
    intents: dict[str, float] = field(default_factory=dict)
    learning: float = 0.0
    personal: float = 0.0
    policy: PolicyFlag | None = None
    meta: bool = False
    sarcasm: bool = False
    evidence: dict[str, list[str]] = field(default_factory=dict)

    @property
    def distress(self) -> tuple[str | None, float]:
        """The strongest distress emotion and its intensity."""
        best: tuple[str | None, float] = (None, 0.0)
        for label in DISTRESS:
            value = self.emotions.get(label, 0.0)
            if value > best[1]:
                best = (label, value)
        return best

    @property
    def tone(self) -> str:
        """distressed, confused, curious, upbeat or neutral: Abbey adapts her temperature."""
        label, value = self.distress
        if value >= 0.4:
            return "confused" if label in ("confused", "overwhelmed") else "distressed"
        if self.learning >= 0.4 or self.emotions.get("curious", 0) >= 0.4:
            return "curious"
        social = max(self.intents.get(k, 0.0) for k in ("greeting", "farewell", "thanks", "ack"))
        if max(self.emotions.get("happy", 0), self.emotions.get("excited", 0), social) >= 0.4:
            return "upbeat"
        return "neutral"

    def to_dict(self) -> dict[str, Any]:
        return {
            "emotions": {k: round(v, 3) for k, v in self.emotions.items()},
            "negated": list(self.negated),
            "urgency": round(self.urgency, 3),
            "technical": round(self.technical, 3),
            "intents": {k: round(v, 3) for k, v in self.intents.items()},
            "learning": round(self.learning, 3),
            "personal": round(self.personal, 3),
            "sarcasm": self.sarcasm,
            "meta": self.meta,
            "policy": (
                {"category": self.policy.category, "evidence": list(self.policy.evidence)}
                if self.policy else None
            ),
            "tone": self.tone,
            "evidence": {k: list(v) for k, v in self.evidence.items()},
        }


def _saturate(total: float) -> float:
    """Map a sum of weights to [0, 1): one strong term ~0.6, two ~0.85, three ~0.95."""
    return 1.0 - math.exp(-max(total, 0.0))


def _uniq(items: Iterable[str], limit: int = 4) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item.lower() not in (s.lower() for s in seen):
            seen.append(item)
        if len(seen) == limit:
            break
    return seen


def _clip(text: str) -> str:
    if len(text) <= MAX_HEAD_CHARS + MAX_TAIL_CHARS:
        return text
    return text[:MAX_HEAD_CHARS] + "\n" + text[-MAX_TAIL_CHARS:]


_NEGATABLE = frozenset({"emotion", "urgency", "learning"})


@dataclass
class _Message:
    """What every signal reads: the (clipped) text, its words and their clauses, the lexicon
    hits by category, and the marks of shouting that several signals share."""

    text: str
    words: list[str]
    clauses: list[int]
    by_cat: dict[str, list[Hit]]
    exclaims: int
    shouting: bool
    complaint: float  # the summed weight of complaint phrases

    def hits(self, category: str) -> list[Hit]:
        return self.by_cat.get(category, [])


def analyze(text: str) -> Signals:
    """Read the signals of one message. Never raises on any str."""
    text = _clip(text)
    tokens = _tokens(text)
    words = [w for w, _ in tokens]
    clauses = [c for _, c in tokens]
    hits = _scan(words, clauses)
    by_cat: dict[str, list[Hit]] = {}
    for hit in hits:
        by_cat.setdefault(hit.category, []).append(hit)
    caps = [w for w in _CAPS_RE.findall(text) if not _is_tech_word(w.lower())]
    msg = _Message(
        text, words, clauses, by_cat, exclaims=text.count("!"),
        shouting=len(caps) >= 2 and len(caps) * 2 >= max(1, len(words) // 2),
        complaint=sum(h.weight for h in by_cat.get("complaint", ())),
    )
    sig = Signals(words=words, hits=hits)
    # In this order: the API shows intents and evidence in the order they were found.
    for read in (_read_emotions, _read_urgency, _read_technical, _read_social, _read_learning,
                 _read_intents, _read_meta):
        read(msg, sig)
    sig.policy = _policy(text, words, by_cat, sig.technical)
    return sig


def _scan(words: list[str], clauses: list[int]) -> list[Hit]:
    """Every lexicon's matches as hits, negated and intensified where the words around say so."""
    hits: list[Hit] = []
    for lexicon in LEXICONS.values():
        matches, cover = lexicon.scan(words)
        # The negation look-back ends at an emotion/urgency/learning phrase and at a negator
        # that belongs to a phrase ("no worries" negates nothing).
        blocks = [False] * len(words)
        for index, (start, end, tags) in enumerate(matches):
            negatable = any(t.category in _NEGATABLE for t in tags)
            for k in range(start, end):
                blocks[k] = negatable
                if not negatable and cover[k] == index and words[k] in NEGATORS:
                    blocks[k] = True
        for start, end, tags in matches:
            phrase = " ".join(words[start:end])
            negated = intense = False
            if any(t.category in _NEGATABLE for t in tags):
                negated = _is_negated(words, clauses, blocks, start)
                intense = any(
                    words[j] in _INTENSIFIERS and clauses[j] == clauses[start]
                    for j in range(max(0, start - 2), start)
                )
            for tag in tags:
                weight = tag.weight * (1.3 if intense and tag.category == "emotion" else 1.0)
                hits.append(Hit(tag.category, tag.label, weight, start, end, phrase,
                                negated and tag.category in _NEGATABLE))
    return hits


def _read_emotions(msg: _Message, sig: Signals) -> None:
    """Sum per label; a negated positive emotion reads as disappointment; complaints, sarcasm
    and shouting add to frustration."""
    totals: dict[str, float] = {}
    emotion_words: dict[str, list[str]] = {}

    def add(label: str, weight: float, *evidence: str) -> None:
        totals[label] = totals.get(label, 0.0) + weight
        emotion_words.setdefault(label, []).extend(evidence)

    for hit in msg.hits("emotion"):
        if hit.negated:
            sig.negated.append(f"not {hit.text}")
            if hit.label in ("happy", "excited"):
                add("disappointed", 0.6 * hit.weight, f"not {hit.text}")
            continue
        add(hit.label, hit.weight, hit.text)
    if msg.complaint:
        add("frustrated", 0.6 * msg.complaint, *(h.text for h in msg.hits("complaint")))
    sarcasm = _sarcasm(msg.words, msg.clauses, msg.by_cat)
    if sarcasm:
        sig.sarcasm = True
        add("frustrated", 0.8, f"sarcasm: {sarcasm}")
    if msg.shouting:
        add("frustrated", 0.5, "shouting")
    boost = 0.1 if msg.exclaims >= 2 else 0.0
    for label, total in totals.items():
        sig.emotions[label] = min(1.0, total + boost)
    for label, items in emotion_words.items():
        sig.evidence[label] = _uniq(items)


def _read_urgency(msg: _Message, sig: Signals) -> None:
    """Urgent phrases, plus exclamation marks and shouting."""
    urgency_hits = [h for h in msg.hits("urgency") if not h.negated]
    urgency = sum(h.weight for h in urgency_hits)
    if msg.exclaims >= 3:
        urgency += 0.3
    elif msg.exclaims == 2:
        urgency += 0.15
    if msg.shouting:
        urgency += 0.3
    sig.urgency = min(1.0, urgency)
    urgency_words = _uniq([h.text for h in urgency_hits] + (["!!!"] if msg.exclaims >= 3 else [])
                          + (["capitals"] if msg.shouting else []))
    if urgency_words:
        sig.evidence["urgency"] = urgency_words
    sig.negated.extend(f"not {hit.text}" for hit in msg.hits("urgency") if hit.negated)


def _read_technical(msg: _Message, sig: Signals) -> None:
    """Technical vocabulary plus structure only code has; a shell command line is an intent."""
    text = msg.text
    tech_hits = msg.hits("tech")
    tech_total = sum(h.weight for h in tech_hits)
    tech_words = [h.text for h in sorted(tech_hits, key=lambda h: -h.weight)]
    for name, pattern, weight in _STRUCTURE:
        found = pattern.search(text)
        if found:
            tech_total += weight
            start = found.start()
            if name == "a file name":  # show "config.yaml", not ".yaml"
                while start > 0 and found.start() - start < 40 and (
                        text[start - 1].isalnum() or text[start - 1] in "_.-"):
                    start -= 1
            tech_words.append(text[start:found.end()].strip()[:24])
    command = _command(text)
    if command:
        tech_words.insert(0, command.split()[0])
        tech_total += 1.0
        sig.intents["command"] = 1.0
        sig.evidence["command"] = [command]
    sig.technical = _saturate(tech_total)
    if tech_words:
        sig.evidence["technical"] = _uniq(tech_words)


def _read_social(msg: _Message, sig: Signals) -> None:
    """Greetings, farewells, thanks, acknowledgements (intents) and personal topics."""
    for label in ("greeting", "farewell", "thanks", "ack", "personal"):
        hits = [h for h in msg.hits("social") if h.label == label]
        if hits:
            sig.intents[label] = min(1.0, sum(h.weight for h in hits))
            sig.evidence[label] = _uniq(h.text for h in hits)
    sig.personal = sig.intents.pop("personal", 0.0)


def _read_learning(msg: _Message, sig: Signals) -> None:
    learning_hits = [h for h in msg.hits("learning") if not h.negated]
    sig.learning = min(1.0, sum(h.weight for h in learning_hits))
    if learning_hits:
        sig.evidence["learning"] = _uniq(h.text for h in sorted(learning_hits, key=lambda h: -h.weight))
    sig.negated.extend(f"not {hit.text}" for hit in msg.hits("learning") if hit.negated)


def _read_intents(msg: _Message, sig: Signals) -> None:
    """Directness, debugging, a request for code, a complaint, a question, a request."""
    direct = msg.hits("direct")
    if direct:
        sig.intents["direct"] = min(1.0, sum(h.weight for h in direct))
        sig.evidence["direct"] = _uniq(h.text for h in direct)
    debug = msg.hits("debugging")
    if debug:
        sig.intents["debugging"] = _saturate(sum(h.weight for h in debug))
        sig.evidence["debugging"] = _uniq(h.text for h in debug)
    code = _code_request(msg.by_cat)
    if code:
        sig.intents["code_request"] = 1.0
        sig.evidence["code_request"] = [code]
    if msg.complaint:
        sig.intents["complaint"] = min(1.0, msg.complaint)
    words = msg.words
    if msg.text.strip().endswith("?") or (words and words[0] in _QUESTION_WORDS):
        sig.intents["question"] = 1.0
    if words and ("please" in words or _has(words, ("can", "you")) or _has(words, ("could", "you"))):
        sig.intents["request"] = 1.0


def _read_meta(msg: _Message, sig: Signals) -> None:
    """A question about the assistant itself: its personas, routing, rules."""
    meta = msg.hits("meta")
    if meta:
        sig.meta = True
        sig.evidence["meta"] = _uniq(h.text for h in meta)


def _has(words: list[str], pair: tuple[str, str]) -> bool:
    return any(words[i] == pair[0] and words[i + 1] == pair[1] for i in range(len(words) - 1))


def _is_tech_word(word: str) -> bool:
    return any(t.category == "tech" for t in LEXICONS["topic"]._tags.get((word,), ()))


def _is_negated(words: list[str], clauses: list[int], blocks: list[bool], start: int) -> bool:
    """A negator up to four words back in the same clause.

    The look-back stops at another emotion, urgency or learning phrase ("not frustrated, just
    curious": the curiosity stands); a negator inside a phrase ("no worries") does not count.
    """
    between: list[str] = []
    for j in range(start - 1, max(-1, start - 5), -1):
        if clauses[j] != clauses[start] or blocks[j]:
            return False
        word = words[j]
        if word in NEGATORS:
            # "never been so frustrated", "couldn't be more annoyed" are emphasis, not negation.
            if "more" in between or (word == "never" and {"so", "this", "as"} & set(between)):
                return False
            return True
        between.append(word)
    return False


def _sarcasm(words: list[str], clauses: list[int], by_cat: dict[str, list[Hit]]) -> str | None:
    """'Oh great, another segfault': praise next to a mishap, with nothing actually fixed."""
    if by_cat.get("resolution"):
        return None
    negative = by_cat.get("negative_event", [])
    for hit in by_cat.get("sarcasm", ()):
        if hit.weight >= 1.0 or negative:
            return hit.text
    if negative:
        last = max(h.start for h in negative)
        for i, word in enumerate(words[:last]):
            clause_start = i == 0 or clauses[i - 1] != clauses[i]
            if word in _POSITIVE_WORDS and clause_start:
                return f"{word} ... {negative[-1].text}"
    return None


_SUBCOMMANDS = {
    "go": re.compile(r"\s+(?:build|run|test|mod|get|install|fmt|vet|version|env|generate|doc|"
                     r"clean|list|work|tool)\b"),
    "ip": re.compile(r"\s+(?:addr|address|a|link|route|r|neigh|netns|rule|-\w+)\b"),
}
_COMMAND_ARG = re.compile(r"(?:^|\s)(?:--?[A-Za-z0-9]|[./~]\S*+|\S*?\w\.\w{1,4}(?!\S))")


def _command(text: str) -> str | None:
    """A message that is (or starts with) a shell command line, like 'ls -la?'."""
    line = text.strip().lstrip("$#> ").strip()
    first = line.split(maxsplit=1)[0].lower().rstrip("?!.,:;") if line else ""
    if not first:
        return None
    rest = line[len(first):]
    command = line.splitlines()[0][:40]
    if first in _SUBCOMMANDS:
        return command if _SUBCOMMANDS[first].match(rest) else None
    if first in _COMMANDS:
        if first in ("export", "alias", "free", "screen") and not rest.strip(" ?"):
            return None  # English words too: need something after them
        return command
    if first in _AMBIGUOUS_COMMANDS and _COMMAND_ARG.search(rest):
        return command
    return None


def _code_request(by_cat: dict[str, list[Hit]]) -> str | None:
    """A verb like 'write' followed within six words by a code noun like 'function'."""
    verbs = by_cat.get("code_verb", [])
    if not verbs:
        return None
    nouns = by_cat.get("code_noun", []) + [h for h in by_cat.get("tech", []) if h.weight >= 0.6]
    found = _first_pair(verbs, nouns, 6)
    return f"{found[0].text} ... {found[1].text}" if found else None


_RECURSIVE = re.compile(r"(?:^|\s)(?:-[a-z]*r[a-z]*|--recursive)(?=\s|$)", re.I)


def _first_pair(firsts: Sequence[Hit], seconds: Sequence[Hit], window: int,
                blockers: Sequence[Hit] = ()) -> tuple[Hit, Hit] | None:
    """The first (a, b) with b starting within `window` words after a ends and no blocker
    starting between them. Sorted starts and bisection keep it O(n log n) on long input."""
    if not firsts or not seconds:
        return None
    ordered = sorted(seconds, key=lambda h: h.start)
    starts = [h.start for h in ordered]
    blocked = sorted(b.start for b in blockers)
    for a in firsts:
        i = bisect.bisect_left(starts, a.end)
        while i < len(ordered) and starts[i] <= a.end + window:
            b = ordered[i]
            j = bisect.bisect_left(blocked, a.end)
            if not (j < len(blocked) and blocked[j] < b.start):
                return a, b
            i += 1
    return None


def _verb_then_noun(verbs: list[Hit], nouns: list[Hit], blockers: list[Hit]) -> tuple[str, ...] | None:
    found = _first_pair([v for v in verbs if v.weight >= 0.8],
                        [n for n in nouns if n.weight >= 0.7], 8, blockers)
    return (found[0].text, found[1].text) if found else None


def _policy(text: str, words: list[str], by_cat: dict[str, list[Hit]],
            technical: float) -> PolicyFlag | None:
    for name, pattern in _DESTRUCTIVE_RE:
        for found in pattern.finditer(text):
            if name.startswith("rm ") and not _RECURSIVE.search(found.group(1)):
                continue  # "rm -f /tmp/x" is not recursive; keep looking
            return PolicyFlag("destructive_command", (found.group(0).strip()[:40], name))

    pol: dict[str, list[Hit]] = {}
    for hit in by_cat.get("policy", ()):
        pol.setdefault(hit.label, []).append(hit)

    def total(label: str) -> float:
        return sum(h.weight for h in pol.get(label, ()))

    def texts(*labels: str) -> tuple[str, ...]:
        return tuple(_uniq(h.text for label in labels for h in pol.get(label, ())))

    if total("destructive") >= 1.0:
        return PolicyFlag("destructive_command", texts("destructive"))
    if pol.get("harm"):
        return PolicyFlag("violence", texts("harm"))

    # Malware: strong phrases alone; otherwise a verb that makes or spreads it followed by a
    # malware noun, with no "detect"/"remove" between them ("write a script to detect
    # keyloggers" is defence).
    if pol.get("malware_strong"):
        return PolicyFlag("malware", texts("malware_strong", "malware"))
    found = _verb_then_noun(pol.get("steal", []), pol.get("stolen_goods", []), [])
    if found:
        return PolicyFlag("malware", found)
    found = _verb_then_noun(pol.get("create", []), pol.get("malware", []), pol.get("defense", []))
    if found:
        return PolicyFlag("malware", found)

    # Weapons: the unambiguous ones alone; the rest need a verb of making or getting, outside
    # a game or a history question.
    weapons = pol.get("weapon", [])
    if any(h.weight > 1.0 for h in weapons):
        return PolicyFlag("weapons", texts("weapon"))
    if not pol.get("fiction"):
        found = _verb_then_noun(pol.get("create", []), weapons, pol.get("defense", []))
        if found:
            return PolicyFlag("weapons", found)

    # Personal data: doxxing or stalking alone; harvesting/leaking with a kind of data; finding
    # a kind of data about a person.
    verbs = pol.get("pii_verb", [])
    noun, target = total("pii_noun"), total("pii_target")
    if any(h.weight >= 1.5 for h in verbs):
        return PolicyFlag("personal_data", texts("pii_verb", "pii_noun", "pii_target"))
    # "What's the home address of <someone>": the kind of data says it all, unless it is the
    # user's own ("update my home address") or a format in code ("validate an SSN in regex").
    for hit in pol.get("pii_noun", ()):
        if hit.weight >= 1.0 and technical < 0.5 and (hit.start == 0 or words[hit.start - 1] not in _OWN):
            return PolicyFlag("personal_data", (hit.text,))
    defence = pol.get("defense", [])
    for verb in pol.get("harvest", ()):
        shielded = any(verb.start - 3 <= b.start < verb.start for b in defence)
        if noun >= 0.4 and not shielded:
            return PolicyFlag("personal_data", (verb.text, *texts("pii_noun")))
    if verbs and noun >= 0.4 and target >= 0.4 and total("pii_verb") + noun + target >= 1.4:
        return PolicyFlag("personal_data", texts("pii_verb", "pii_noun", "pii_target"))

    # Disabling the assistant's safety.
    if pol.get("jailbreak"):
        return PolicyFlag("disable_safety", texts("jailbreak"))
    objects = pol.get("safety_object", [])
    # "your rules" is always about us; "the safety" with a bare "you" only outside a technical
    # context ("can you turn off the safety check in eslint" is about eslint).
    self_ref = any(h.weight >= 1.0 for h in pol.get("self", ()))
    addressed = bool(pol.get("self")) and (technical < 0.3 or bool(pol.get("unrestricted")))
    if self_ref or addressed:
        targets = objects
    else:
        targets = [o for o in objects if o.weight >= 0.9]
    verbs = [v for v in pol.get("bypass", ()) if v.weight >= 0.8]
    # Either order within six words: "disable your filters", "your filters, disable them".
    found = _first_pair(verbs, targets, 6) or _first_pair(targets, verbs, 6)
    if found:
        return PolicyFlag("disable_safety", tuple(h.text for h in found))
    if pol.get("unrestricted") and pol.get("roleplay") and pol.get("self"):
        return PolicyFlag("disable_safety", texts("roleplay", "unrestricted"))
    return None
