"""The router's learned component: a multinomial logistic regression over hashed text features.

Features are word unigrams and bigrams, character 3-5-grams inside each word (so "ransomwar",
"hackin" and "passwrd" land near their correct spellings), a few shape markers (a code fence,
all-caps, a trailing question mark), and the concept classes of `data/concepts.toml` that the
message mentions, alone and in pairs (the model learns that "harm" with "person" matters, and
"harm" with "process" does not). Each feature string is hashed with CRC-32 into `DIM` buckets,
so the model is a fixed-size weight matrix and needs no vocabulary file. The weights
are trained by `scripts/train_router.py` on the labelled corpus in `data/corpus.jsonl` and shipped
as `data/router_model.npz` (int8 with one scale per class); inference is pure numpy.

Two heads share the features: the route head picks one of `ROUTES` (`abbey`, `aviva`, `meta`, a
question about the assistant itself, and `policy`, a violation of one of the rules), and the rule
head, trained on violations only, says which rule (`POLICY_RULES`).

Words miss what a message means when it says it in other words ("finish my life", "get into my
ex's account"). When the packaged sentence encoder is present (`models/sentence_encoder.py`),
the route head is the `Semantic` one: the same hashed features plus the message's sentence
embedding and, for each route, how near the message is to the corpus messages of that route
(the mean of the `KNN_K` nearest cosines, and the nearest), and its rule head reads the
embedding too. Without the encoder the words-only heads decide, with their own threshold.
"""

from __future__ import annotations

import re
import tomllib
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DIM = 1 << 14
DATA = Path(__file__).parent / "data"
MODEL_PATH = DATA / "router_model.npz"
ADAPTER_PATH = DATA / "router_encoder.npz"  # the tuned encoder's adapters and classifier
CONCEPTS_PATH = DATA / "concepts.toml"

POLICY_RULES = (
    "violence", "weapons", "malware_intrusion", "privacy_stalking", "fraud_forgery",
    "destructive_commands", "animal_cruelty", "disable_safety", "hate_harassment",
    "child_safety", "self_harm",
)
ROUTES = ("abbey", "aviva", "meta", "policy")

# Long pastes: the start says what is asked, the end often says it again; the middle is code.
MAX_HEAD_TOKENS = 400
MAX_TAIL_TOKENS = 100
WORD_WEIGHT = 1.0  # the word unigrams and bigrams (tuned on the dev split)
CHAR_WEIGHT = 1.0  # the character n-grams' share next to the words' (tuned on the dev split)
CONCEPT_WEIGHT = 0.5  # each concept mentioned, and each pair of them (tuned on the dev split)
MAX_CONCEPT_CHARS = 8_000

_TOKEN_RE = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[^\sa-z0-9_]+")
_ALPHA_RE = re.compile(r"[a-z]{2,}")
_NUMBER_RE = re.compile(r"\d+")


def _bucket(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8", "surrogatepass")) & (DIM - 1)


@lru_cache(maxsize=65536)
def _word_buckets(token: str) -> tuple[int, tuple[int, ...]]:
    """The unigram bucket of a token and the buckets of its character 3-5-grams."""
    grams: list[int] = []
    if _ALPHA_RE.fullmatch(token):
        padded = f"<{token}>"
        for n in (3, 4, 5):
            grams.extend(_bucket(f"c{n}:{padded[i:i + n]}") for i in range(len(padded) - n + 1))
    return _bucket(f"w:{token}"), tuple(grams)


def tokens(text: str) -> list[str]:
    """Lower-cased word and symbol-run tokens; digits folded to 0; long texts head and tail."""
    toks = _TOKEN_RE.findall(_NUMBER_RE.sub("0", text.lower()))
    if len(toks) > MAX_HEAD_TOKENS + MAX_TAIL_TOKENS:
        toks = toks[:MAX_HEAD_TOKENS] + toks[-MAX_TAIL_TOKENS:]
    return toks


_CONCEPT_WORD_RE = re.compile(r"[a-z0-9]+(?:['\u2019-][a-z0-9]+)*")
_WORDY_TERM_RE = re.compile(r"[a-z0-9'*\- ]+")


@dataclass(frozen=True, slots=True)
class _Term:
    concept: str
    words: tuple[str, ...]  # "kill*" a prefix, "*" any one word, anything else exact


class ConceptIndex:
    """Finds the concept classes a message mentions: word terms by a dictionary walk over its
    words (a term's first word exact or as a prefix), terms with symbols ("rm -rf", "/dev/sd*")
    by one pattern per concept. Both are linear in the message, well under a millisecond."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.names = tuple(table)
        self.exact: dict[str, list[_Term]] = {}
        self.prefix: dict[str, list[_Term]] = {}
        symbolic: dict[str, list[str]] = {}
        for name, terms in table.items():
            for raw in terms:
                term = " ".join(raw.lower().split())
                if not term:
                    continue
                if not _WORDY_TERM_RE.fullmatch(term) or term.split(" ")[0] == "*":
                    symbolic.setdefault(name, []).append(term)
                    continue
                words = tuple(term.split(" "))
                first = words[0]
                entry = _Term(name, words)
                if first.endswith("*"):
                    self.prefix.setdefault(first[:-1], []).append(entry)
                else:
                    self.exact.setdefault(first, []).append(entry)
        self.symbolic = tuple((name, re.compile("|".join(
            _symbolic_pattern(t) for t in sorted(terms, key=len, reverse=True))))
            for name, terms in symbolic.items())
        self.max_prefix = max((len(p) for p in self.prefix), default=0)

    def find(self, text: str) -> dict[str, str]:
        low = text.lower()
        if len(low) > MAX_CONCEPT_CHARS:
            low = low[:MAX_CONCEPT_CHARS - 2_000] + "\n" + low[-2_000:]
        words = _CONCEPT_WORD_RE.findall(low.replace("\u2019", "'"))
        hits: dict[str, str] = {}
        for i, word in enumerate(words):
            candidates = list(self.exact.get(word, ()))
            for n in range(1, min(len(word), self.max_prefix) + 1):
                candidates.extend(self.prefix.get(word[:n], ()))
            for term in candidates:
                if term.concept in hits:
                    continue
                end = i + len(term.words)
                if end <= len(words) and all(_word_matches(w, words[i + k])
                                             for k, w in enumerate(term.words)):
                    hits[term.concept] = " ".join(words[i:end])
        for name, pattern in self.symbolic:
            if name not in hits:
                match = pattern.search(low)
                if match:
                    hits[name] = match.group(0).strip()
        return hits


def _word_matches(term_word: str, word: str) -> bool:
    if term_word == "*":
        return True
    if term_word.endswith("*"):
        return word.startswith(term_word[:-1])
    return word == term_word


def _symbolic_pattern(term: str) -> str:
    out = r"(?<!\w)" if term[0].isalnum() else ""
    for i, word in enumerate(term.split(" ")):
        if i:
            out += r"\s+"
        out += r"\S+" if word == "*" else re.escape(word).replace(r"\*", r"\S*")
    return out + (r"(?!\w)" if term[-1].isalnum() else "")


@lru_cache(maxsize=1)
def concept_index() -> ConceptIndex:
    """The concept classes of `data/concepts.toml`."""
    with CONCEPTS_PATH.open("rb") as f:
        return ConceptIndex(tomllib.load(f)["concepts"])


def concept_hits(text: str) -> dict[str, str]:
    """The concepts a message mentions and, for each, the words that first matched it."""
    return concept_index().find(text)


# Concepts that say nothing about what a message is about: a message with no other concept
# carries no topic of its own ("and the second one?").
CONTENTLESS = frozenset({"question", "request", "intensity", "first_person"})


def _shape(text: str) -> list[str]:
    out = []
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) > 0.6:
        out.append("s:caps")
    if "```" in text or "\n    " in text or "Traceback" in text:
        out.append("s:code")
    if text.rstrip().endswith("?"):
        out.append("s:question")
    words = len(text.split())
    out.append("s:len" + ("1" if words <= 3 else "2" if words <= 12 else "3" if words <= 60
                          else "4"))
    return out


@dataclass(slots=True)
class Features:
    """A message as sparse features, and for each feature the token it came from."""

    index: np.ndarray  # int64 bucket ids
    value: np.ndarray  # float32 weights
    source: list[str]  # the word or bigram behind each feature ("" for shape markers)

    def source_ids(self) -> tuple[np.ndarray, list[str]]:
        """Each feature's source as an index into the list of distinct sources."""
        ids: dict[str, int] = {}
        out = np.fromiter((ids.setdefault(s, len(ids)) for s in self.source), dtype=np.int64,
                          count=len(self.source))
        return out, list(ids)


def featurize(text: str) -> Features:
    toks = tokens(text)
    idx: list[int] = []
    src: list[str] = []
    grams: list[int] = []
    gram_src: list[str] = []
    for i, tok in enumerate(toks):
        unigram, chars = _word_buckets(tok)
        idx.append(unigram)
        src.append(tok)
        grams.extend(chars)
        gram_src.extend([tok] * len(chars))
        if i:
            idx.append(_bucket(f"b:{toks[i - 1]} {tok}"))
            src.append(f"{toks[i - 1]} {tok}")
    for marker in _shape(text):
        idx.append(_bucket(marker))
        src.append("")
    hits = sorted(concept_hits(text).items())
    cidx: list[int] = []
    csrc: list[str] = []
    cval: list[float] = []
    for i, (name, words) in enumerate(hits):
        cidx.append(_bucket(f"k:{name}"))
        csrc.append(words)
        cval.append(CONCEPT_WEIGHT)
        for other, other_words in hits[i + 1:]:
            # A pair feature counted half for each side's words, so an explanation can
            # name both (the logit is the same as one feature at full weight).
            pair = _bucket(f"kk:{name}+{other}")
            cidx += [pair, pair]
            csrc += [words, other_words]
            cval += [CONCEPT_WEIGHT / 2, CONCEPT_WEIGHT / 2]
    word_value = WORD_WEIGHT / np.sqrt(max(len(idx), 1))
    char_value = CHAR_WEIGHT / np.sqrt(max(len(grams), 1))
    n = len(idx) + len(grams) + len(cidx)
    index = np.fromiter(idx + grams + cidx, dtype=np.int64, count=n)
    value = np.empty(n, dtype=np.float32)
    value[:len(idx)] = word_value
    value[len(idx):len(idx) + len(grams)] = char_value
    value[len(idx) + len(grams):] = cval
    return Features(index, value, src + gram_src + csrc)


def dense(features: Features, out: np.ndarray) -> None:
    """Add a message's features into a dense row (training builds its matrix with this)."""
    np.add.at(out, features.index, features.value)


@dataclass(frozen=True, slots=True)
class Prediction:
    routes: dict[str, float]  # every label in ROUTES, summing to 1
    rules: dict[str, float]  # every rule in POLICY_RULES, summing to 1
    features: Features
    route_rows: np.ndarray  # the route head's weights of the message's features
    rule_rows: np.ndarray
    semantic: bool = False  # the route head with the sentence embedding decided
    tuned: bool = False  # and the tuned encoder's classifier was blended in

    def evidence(self, label: str, limit: int = 3) -> list[str]:
        """The words that made `label` (a route or a rule) stand out, strongest first: what each
        word added to the label beyond its mean over the head's labels, summed over its unigram,
        bigrams, character n-grams and concepts."""
        if label in ROUTES:
            rows, k = self.route_rows, ROUTES.index(label)
        else:
            rows, k = self.rule_rows, POLICY_RULES.index(label)
        if not len(rows):
            return []
        lift = (rows[:, k] - rows.mean(axis=1)) * self.features.value
        ids, sources = self.features.source_ids()
        totals = np.bincount(ids, weights=lift, minlength=len(sources))
        out: list[str] = []
        for i in np.argsort(-totals, kind="stable"):
            if totals[i] <= 0:
                break
            source = sources[i]
            if _quotable(source) and not any(source in kept or kept in source for kept in out):
                out.append(source)
                if len(out) == limit:
                    break
        return out


class Head:
    """One softmax layer over the hashed features."""

    def __init__(self, labels: tuple[str, ...], weights: np.ndarray, bias: np.ndarray) -> None:
        if weights.shape != (DIM, len(labels)) or bias.shape != (len(labels),):
            raise ValueError(f"router model head has shape {weights.shape}, "
                             f"expected {(DIM, len(labels))}")
        self.labels = labels
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)

    def probs(self, rows: np.ndarray, value: np.ndarray) -> np.ndarray:
        logits = value @ rows + self.bias
        p = np.exp(logits - logits.max())
        return p / p.sum()


KNN_K = 3
EMBEDDING_WEIGHT = 2.0  # the sentence embedding's scale next to the hashed features


def knn_features(similarities: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Per route, the mean of the `k` highest similarities to its exemplars and the highest
    (rows: messages; columns: exemplars)."""
    sims = np.atleast_2d(similarities)
    out = np.zeros((len(sims), 2 * len(ROUTES)), dtype=np.float32)
    for c in range(len(ROUTES)):
        cols = sims[:, labels == c]
        kk = min(k, cols.shape[1])
        if kk == 0:
            continue
        top = np.partition(cols, cols.shape[1] - kk, axis=1)[:, -kk:]
        out[:, 2 * c] = top.mean(axis=1)
        out[:, 2 * c + 1] = top.max(axis=1)
    return out


def dense_features(embeddings: np.ndarray, knn: np.ndarray, knn_weight: float) -> np.ndarray:
    """The semantic head's dense inputs: the scaled embedding, then the scaled nearness."""
    return np.hstack([np.atleast_2d(embeddings) * EMBEDDING_WEIGHT,
                      knn * (EMBEDDING_WEIGHT * knn_weight)]).astype(np.float32)


class Semantic:
    """The heads with meaning. The route head: hashed features, the sentence embedding and the
    nearness to each route's exemplars (the labelled corpus messages it was trained on). The rule
    head: hashed features and the embedding."""

    def __init__(self, head: Head, dense: np.ndarray, exemplars: np.ndarray, labels: np.ndarray,
                 knn_weight: float, policy_threshold: float, lexicon_flag: bool, *,
                 rule: Head, rule_dense: np.ndarray) -> None:
        if dense.shape != (exemplars.shape[1] + 2 * len(ROUTES), len(ROUTES)):
            raise ValueError(f"semantic head has shape {dense.shape} for {exemplars.shape[1]}-d "
                             "embeddings")
        if rule_dense.shape != (exemplars.shape[1], len(POLICY_RULES)):
            raise ValueError(f"semantic rule head has shape {rule_dense.shape} for "
                             f"{exemplars.shape[1]}-d embeddings")
        self.head = head
        self.dense = np.ascontiguousarray(dense, dtype=np.float32)
        self.exemplars = np.ascontiguousarray(exemplars, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.knn_weight = float(knn_weight)
        self.policy_threshold = float(policy_threshold)
        self.lexicon_flag = bool(lexicon_flag)
        self.rule = rule
        self.rule_dense = np.ascontiguousarray(rule_dense, dtype=np.float32)

    @property
    def dim(self) -> int:
        return self.exemplars.shape[1]

    def probs(self, rows: np.ndarray, value: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        knn = knn_features(self.exemplars @ embedding, self.labels)
        logits = value @ rows + (dense_features(embedding, knn, self.knn_weight) @ self.dense)[0] \
            + self.head.bias
        p = np.exp(logits - logits.max())
        return p / p.sum()

    def rule_probs(self, rows: np.ndarray, value: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """Which rule a violation breaks, from its words and its embedding (words alone confuse
        an oblique self-harm message with violence, which sends a person in crisis a refusal)."""
        logits = value @ rows + (embedding * EMBEDDING_WEIGHT) @ self.rule_dense + self.rule.bias
        p = np.exp(logits - logits.max())
        return p / p.sum()


def pool(semantic: np.ndarray, tuned: np.ndarray, share: float) -> np.ndarray:
    """The semantic head's and the tuned encoder's route probabilities pooled geometrically,
    p ∝ p_semantic^(1 - share) · p_tuned^share: where one of them is sure and the other is not,
    the sure one counts for more than in a weighted mean (on dev it refuses fewer benign
    messages than the mean at the same policy recall). Works on one row or on a matrix."""
    if not share:
        return semantic
    logp = (1 - share) * np.log(np.maximum(semantic, 1e-12)) + share * np.log(np.maximum(tuned, 1e-12))
    p = np.exp(logp - logp.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


class Tuned:
    """The tuned encoder's classifier (its mean-pooled state to route probabilities, trained by
    `scripts/tune_router_encoder.py`) and its share in the blend with the semantic head."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray, blend: float) -> None:
        if weights.ndim != 2 or weights.shape[1] != len(ROUTES) or bias.shape != (len(ROUTES),):
            raise ValueError(f"tuned classifier has shape {weights.shape} / {bias.shape}")
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.blend = float(blend)

    @property
    def dim(self) -> int:
        return self.weights.shape[0]

    def probs(self, state: np.ndarray) -> np.ndarray:
        logits = state @ self.weights + self.bias
        p = np.exp(logits - logits.max())
        return p / p.sum()


class RouterModel:
    """The trained heads, the policy threshold, and a `predict()` well under a millisecond
    (given the message's sentence embedding, which memory shares)."""

    def __init__(self, route: Head, rule: Head, policy_threshold: float = 0.5,
                 input_sha256: str = "", semantic: Semantic | None = None,
                 tuned: Tuned | None = None) -> None:
        if route.labels != ROUTES or rule.labels != POLICY_RULES:
            raise ValueError(f"router model labels {route.labels} / {rule.labels} do not match "
                             f"{ROUTES} / {POLICY_RULES}")
        self.route = route
        self.rule = rule
        self.policy_threshold = float(policy_threshold)
        self.input_sha256 = input_sha256
        self.semantic = semantic
        self.tuned = tuned if semantic is not None else None  # blended into the semantic head

    def threshold(self, semantic: bool) -> float:
        """The policy threshold of the head that decided (`Prediction.semantic`)."""
        return self.semantic.policy_threshold if semantic and self.semantic else \
            self.policy_threshold

    def uses_lexicon_flag(self, semantic: bool) -> bool:
        """Whether the lexicon's policy flag also marks a violation for the head that decided:
        always for the words-only fallback, where its phrases are a floor under the classifier;
        for the semantic head as training chose on dev."""
        return self.semantic.lexicon_flag if semantic and self.semantic else True

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> RouterModel:
        with np.load(path) as data:
            heads = []
            for name, labels in (("route", ROUTES), ("rule", POLICY_RULES)):
                stored = tuple(str(x) for x in data[f"{name}_labels"])
                if stored != labels:
                    raise ValueError(f"router model {name} labels {stored} do not match {labels}")
                weights = data[f"{name}_weights_q"].astype(np.float32) * data[f"{name}_scale"]
                heads.append(Head(labels, weights, data[f"{name}_bias"]))
            semantic = None
            if "semantic_dense" in data:
                weights = data["semantic_weights_q"].astype(np.float32) * data["semantic_scale"]
                exemplars = data["exemplars_q"].astype(np.float32) * data["exemplars_scale"][:, None]
                rule_weights = (data["semantic_rule_weights_q"].astype(np.float32)
                                * data["semantic_rule_scale"])
                semantic = Semantic(Head(ROUTES, weights, data["semantic_bias"]),
                                    data["semantic_dense"], exemplars, data["exemplar_labels"],
                                    float(data["knn_weight"]),
                                    float(data["semantic_policy_threshold"]),
                                    bool(data["semantic_lexicon_flag"]),
                                    rule=Head(POLICY_RULES, rule_weights,
                                              data["semantic_rule_bias"]),
                                    rule_dense=data["semantic_rule_dense"])
            tuned = None
            if "tuned_weights" in data:
                tuned = Tuned(data["tuned_weights"], data["tuned_bias"], float(data["tuned_blend"]))
            return cls(heads[0], heads[1], float(data["policy_threshold"]),
                       str(data["input_sha256"]), semantic, tuned)

    def save(self, path: Path) -> None:
        """int8 weights with one scale per class (a quarter of float32), int8 exemplars with one
        scale per row, compressed."""
        arrays: dict[str, np.ndarray] = {}
        heads = [("route", self.route), ("rule", self.rule)]
        if self.semantic is not None:
            sem = self.semantic
            heads += [("semantic", sem.head), ("semantic_rule", sem.rule)]
            row_scale = np.abs(sem.exemplars).max(axis=1) / 127.0
            row_scale[row_scale == 0] = 1.0
            arrays.update(
                semantic_dense=sem.dense, semantic_rule_dense=sem.rule_dense,
                exemplar_labels=sem.labels.astype(np.int8),
                exemplars_q=np.round(sem.exemplars / row_scale[:, None]).astype(np.int8),
                exemplars_scale=row_scale.astype(np.float32),
                knn_weight=np.float32(sem.knn_weight),
                semantic_policy_threshold=np.float32(sem.policy_threshold),
                semantic_lexicon_flag=np.bool_(sem.lexicon_flag))
        if self.tuned is not None:
            arrays.update(tuned_weights=self.tuned.weights, tuned_bias=self.tuned.bias,
                          tuned_blend=np.float32(self.tuned.blend))
        for name, head in heads:
            scale = np.abs(head.weights).max(axis=0) / 127.0
            scale[scale == 0] = 1.0
            arrays[f"{name}_weights_q"] = np.round(head.weights / scale).astype(np.int8)
            arrays[f"{name}_scale"] = scale.astype(np.float32)
            arrays[f"{name}_bias"] = head.bias
            arrays[f"{name}_labels"] = np.array(head.labels)
        np.savez_compressed(path, **arrays, policy_threshold=np.float32(self.policy_threshold),
                            input_sha256=np.array(self.input_sha256))

    def predict(self, text: str, embedding: np.ndarray | None = None,
                tuned_state: np.ndarray | None = None) -> Prediction:
        """`embedding`: the message's sentence embedding (unit length), or None for words only;
        `tuned_state`: the tuned encoder's mean-pooled state, blended in with the embedding."""
        features = featurize(text)
        semantic = self.semantic if embedding is not None else None
        if semantic is not None and len(embedding) != semantic.dim:
            raise ValueError(f"a {len(embedding)}-d embedding for a {semantic.dim}-d router")
        tuned = self.tuned if semantic is not None and tuned_state is not None else None
        if tuned is not None and len(tuned_state) != tuned.dim:
            raise ValueError(f"a {len(tuned_state)}-d tuned state for a {tuned.dim}-d head")
        if semantic is not None:
            route_rows = semantic.head.weights[features.index]
            routes = semantic.probs(route_rows, features.value, embedding)
            if tuned is not None:
                routes = pool(routes, tuned.probs(tuned_state), tuned.blend)
            rule_rows = semantic.rule.weights[features.index]
            rules = semantic.rule_probs(rule_rows, features.value, embedding)
        else:
            route_rows = self.route.weights[features.index]
            routes = self.route.probs(route_rows, features.value)
            rule_rows = self.rule.weights[features.index]
            rules = self.rule.probs(rule_rows, features.value)
        return Prediction(dict(zip(ROUTES, routes.tolist(), strict=True)),
                          dict(zip(POLICY_RULES, rules.tolist(), strict=True)),
                          features, route_rows, rule_rows, semantic is not None,
                          tuned is not None)


@lru_cache(maxsize=1)
def _skip_words() -> frozenset[str]:
    with CONCEPTS_PATH.open("rb") as f:
        return frozenset(tomllib.load(f).get("explain", {}).get("skip", []))


def _quotable(source: str) -> bool:
    if not source:
        return False
    words = source.split()
    return bool(words) and all(any(ch.isalnum() for ch in w) for w in words) and not all(
        w in _skip_words() for w in words)


@lru_cache(maxsize=1)
def default_model() -> RouterModel:
    return RouterModel.load()
