"""Train the persona router's classifier from the labelled corpus (deterministic, CPU, seconds).

    python scripts/train_router.py            # choose settings on dev, train, write the model
    python scripts/train_router.py --check    # retrain and compare with the shipped model

Two multinomial logistic regressions share the features (full-batch Adam on the softmax
cross-entropy with an L2 penalty, classes weighted by inverse frequency): the route head (abbey,
aviva, meta, policy) and the rule head (which policy rule, fitted on violations only). A second
route head, the semantic one, also reads each message's sentence embedding from the packaged
encoder and its nearness to the training messages of each route (a message is never its own
neighbour); the router uses it whenever the encoder is installed. Settings are chosen on the
corpus's `dev` rows with heads fitted on its `train` rows: the L2 strength and the policy
threshold (the route head's `policy` probability at or above which a message is a violation)
and, for the semantic head, the weight of the nearness features, the share of the tuned
encoder's classifier (`scripts/tune_router_encoder.py`, whose file holds its dev probabilities)
and whether the lexicon's policy flag counts, minimising dev errors with a
missed violation counted `MISS_COST` times and a benign message flagged `FLAG_COST` times. The
dev decisions are the router's, with the lexicon's scores blended in (and, for the words-only
head, its policy flag counted). A second rule head reads the embedding as well, its L2
strength chosen on dev rule accuracy. The shipped heads are then refitted on train and dev
together with those settings. The `test` rows are never read here.

The model is written to `abi_tui/personas/data/router_model.npz` with the threshold and a SHA-256
of its inputs (the corpus, the concept classes, the feature code and this script).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from abi_tui.models import sentence_encoder, sentence_model  # noqa: E402
from abi_tui.personas import classifier, readable  # noqa: E402
from abi_tui.personas.classifier import (  # noqa: E402
    DIM,
    EMBEDDING_WEIGHT,
    POLICY_RULES,
    ROUTES,
    Head,
    RouterModel,
    Semantic,
    Tuned,
    dense_features,
    knn_features,
    pool,
)
from abi_tui.personas.lexicon_scores import distribution, lexicon_tally  # noqa: E402
from abi_tui.personas.readable import plain  # noqa: E402
from abi_tui.personas.router import LEXICON_WEIGHT, policy_rules  # noqa: E402
from abi_tui.personas.signals import analyze  # noqa: E402

CORPUS = ROOT / "abi_tui" / "personas" / "data" / "corpus.jsonl"
L2_GRID = (1e-5, 1e-4)
KNN_WEIGHTS = (2.5, 5.0)
STEPS = 150
SEMANTIC_STEPS = 300  # the dense part converges more slowly than the sparse one
LEARNING_RATE = 0.01
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.10, 0.61, 0.05))
# Whether the lexicon's policy flag also marks a violation, for the semantic head (the words-only
# fallback always counts it: there its phrases are a floor under a weaker classifier).
LEXICON_FLAG = (True, False)
BLENDS = (0.0, 0.25, 0.5, 0.75)  # the tuned encoder's share in the semantic head's probabilities
MISS_COST = 3  # a violation answered as if it were fine is worse than a needless refusal,
FLAG_COST = 2  # and a needless refusal is worse than an answer from another persona
POLICY = ROUTES.index("policy")


def input_digest() -> str:
    """What the model is a function of: the corpus, the concepts and the code."""
    h = hashlib.sha256()
    for path in (CORPUS, classifier.CONCEPTS_PATH, Path(classifier.__file__), Path(__file__),
                 Path(readable.__file__), Path(sentence_encoder.__file__), classifier.ADAPTER_PATH):
        h.update(path.read_bytes().replace(b"\r\n", b"\n"))
    h.update(encoder_version().encode())
    return h.hexdigest()


def encoder_version() -> str:
    from importlib import metadata

    try:
        return f"{sentence_model.DISTRIBUTION}=={metadata.version(sentence_model.DISTRIBUTION)}"
    except metadata.PackageNotFoundError:
        return "no encoder"


def embed(rows: list[dict]) -> np.ndarray:
    encoder = sentence_encoder.shared_encoder()
    if encoder is None:
        raise SystemExit(f"the sentence encoder is not installed: {sentence_model.INSTALL_HINT}")
    return encoder.encode_many([row["text"] for row in rows])


def load_corpus() -> list[dict]:
    """The corpus, each message as the router reads it (`readable.plain`)."""
    with CORPUS.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        row["text"] = plain(row["text"])
    return rows


def route_of(row: dict) -> str:
    if row["policy"]:
        return "policy"
    return "meta" if row["kind"] == "meta" else row["persona"]


class Sparse:
    """Rows of hashed features as coordinate lists: products with a weight matrix in numpy."""

    def __init__(self, rows: list[dict]) -> None:
        feats = [classifier.featurize(row["text"]) for row in rows]
        self.n = len(rows)
        self.row = np.concatenate([np.full(len(f.index), i) for i, f in enumerate(feats)])
        self.col = np.concatenate([f.index for f in feats])
        self.val = np.concatenate([f.value for f in feats]).astype(np.float32)
        self.row_starts = np.searchsorted(self.row, np.arange(self.n))  # every row has features
        self.by_col = np.argsort(self.col, kind="stable")
        self.cols, self.col_starts = np.unique(self.col[self.by_col], return_index=True)

    def dot(self, w: np.ndarray) -> np.ndarray:
        """X @ w."""
        return np.add.reduceat(w[self.col] * self.val[:, None], self.row_starts, axis=0)

    def tdot(self, g: np.ndarray) -> np.ndarray:
        """X.T @ g, as a dense (DIM, k) matrix."""
        o = self.by_col
        parts = np.add.reduceat(g[self.row[o]] * self.val[o, None], self.col_starts, axis=0)
        out = np.zeros((DIM, g.shape[1]), dtype=np.float32)
        out[self.cols] = parts
        return out


def route_matrix(rows: list[dict]) -> tuple[Sparse, np.ndarray]:
    return Sparse(rows), np.array([ROUTES.index(route_of(row)) for row in rows])


def rule_matrix(rows: list[dict]) -> tuple[Sparse, np.ndarray]:
    rows = [row for row in rows if row["policy"]]
    return Sparse(rows), np.array([POLICY_RULES.index(row["policy"]) for row in rows])


def fit(x: Sparse, y: np.ndarray, labels: tuple[str, ...], l2: float,
        dense: np.ndarray | None = None) -> Head | tuple[Head, np.ndarray]:
    """The head; with `dense` (one row of dense features per message), also their weights."""
    n, k = len(y), len(labels)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    counts = np.bincount(y, minlength=k).astype(np.float32)
    sample_weight = (n / (k * np.maximum(counts, 1.0)))[y][:, None] / n
    w = np.zeros((DIM, k), dtype=np.float32)
    b = np.zeros(k, dtype=np.float32)
    d = np.zeros((0 if dense is None else dense.shape[1], k), dtype=np.float32)
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in (w, b, d)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, (STEPS if dense is None else SEMANTIC_STEPS) + 1):
        logits = x.dot(w) + b
        if dense is not None:
            logits += dense @ d
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sample_weight
        grads = [x.tdot(g) + l2 * w, g.sum(axis=0),
                 (dense.T @ g + l2 * d) if dense is not None else d]
        for param, grad, (m, v) in zip((w, b, d), grads, moments, strict=True):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= LEARNING_RATE * (m / (1 - beta1 ** step)) / (
                np.sqrt(v / (1 - beta2 ** step)) + eps)
    return Head(labels, w, b) if dense is None else (Head(labels, w, b), d)


def probabilities(head: Head, x: Sparse, dense: np.ndarray | None = None,
                  dense_weights: np.ndarray | None = None) -> np.ndarray:
    logits = x.dot(head.weights) + head.bias
    if dense is not None:
        logits += dense @ dense_weights
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


class Lexicon:
    """The lexicon's opinion of some rows, as the router uses it: a policy flag and persona
    scores (in route order: abbey, aviva, meta)."""

    def __init__(self, rows: list[dict]) -> None:
        categories = policy_rules().lexicon_categories
        self.flag = np.zeros(len(rows), dtype=bool)
        self.dist = np.zeros((len(rows), 3))
        for i, row in enumerate(rows):
            sig = analyze(row["text"])
            self.flag[i] = sig.policy is not None and sig.policy.category in categories
            d = distribution(lexicon_tally(sig, row["text"]).scores())
            self.dist[i] = (d["abbey"], d["aviva"], d["abi"])


def decide(p: np.ndarray, threshold: float, lex: Lexicon, lex_flag: bool) -> np.ndarray:
    """The route for each row: policy at or above the threshold (or, with `lex_flag`, flagged
    by the lexicon), else the likeliest other with the lexicon's scores blended in."""
    rest = p[:, :POLICY] / p[:, :POLICY].sum(axis=1, keepdims=True)
    rest = (1 - LEXICON_WEIGHT) * rest + LEXICON_WEIGHT * lex.dist
    flagged = lex.flag if lex_flag else np.zeros_like(lex.flag)
    return np.where((p[:, POLICY] >= threshold) | flagged, POLICY, rest.argmax(axis=1))


def scores(p: np.ndarray, y: np.ndarray, threshold: float, lex: Lexicon, lex_flag: bool,
           ) -> tuple[float, float, int]:
    """(route accuracy, policy recall, weighted errors) at a threshold."""
    pred = decide(p, threshold, lex, lex_flag)
    policy = y == POLICY
    missed = int((policy & (pred != POLICY)).sum())
    flagged = int((~policy & (pred == POLICY)).sum())
    errors = int((pred != y).sum()) + (MISS_COST - 1) * missed + (FLAG_COST - 1) * flagged
    recall = 1.0 - missed / max(int(policy.sum()), 1)
    return float((pred == y).mean()), recall, errors


def train(verbose: bool = True) -> RouterModel:
    started = time.perf_counter()
    rows = load_corpus()
    train_rows = [r for r in rows if r["split"] == "train"]
    dev_rows = [r for r in rows if r["split"] == "dev"]
    x_train, y_train = route_matrix(train_rows)
    x_dev, y_dev = route_matrix(dev_rows)
    lex_dev = Lexicon(dev_rows)
    best: tuple | None = None
    for l2 in L2_GRID:
        p_dev = probabilities(fit(x_train, y_train, ROUTES, l2), x_dev)
        for threshold in THRESHOLDS:
            acc, recall, errors = scores(p_dev, y_dev, threshold, lex_dev, lex_flag=True)
            if best is None or errors < best[0]:
                best = (errors, l2, threshold, acc, recall)
    assert best is not None
    _, l2, threshold, acc, recall = best
    x_rule_train, y_rule_train = rule_matrix(train_rows)
    x_rule_dev, y_rule_dev = rule_matrix(dev_rows)
    rule_dev = probabilities(fit(x_rule_train, y_rule_train, POLICY_RULES, l2),
                             x_rule_dev).argmax(axis=1)
    rule_acc = float((rule_dev == y_rule_dev).mean())
    if verbose:
        print(f"chose l2={l2:g}, policy threshold {threshold}: with heads fitted on train, dev "
              f"route accuracy {acc:.3f}, policy recall {recall:.3f}, rule accuracy {rule_acc:.3f}")
    e_train, e_dev = embed(train_rows), embed(dev_rows)
    tuned_dev, tuned_head = tuned_classifier(len(dev_rows))
    dense_of = _dense_builder(e_train)
    sem_best: tuple | None = None
    for l2_sem in L2_GRID:
        for knn_weight in KNN_WEIGHTS:
            head, dense_w = fit(x_train, y_train, ROUTES, l2_sem,
                                dense_of(e_train, y_train, knn_weight, own=True))
            p_dev = probabilities(head, x_dev, dense_of(e_dev, y_train, knn_weight), dense_w)
            for blend in BLENDS:
                p = pool(p_dev, tuned_dev, blend)
                for t, flag in product(THRESHOLDS, LEXICON_FLAG):
                    acc_s, recall_s, errors = scores(p, y_dev, t, lex_dev, flag)
                    if sem_best is None or errors < sem_best[0]:
                        sem_best = (errors, l2_sem, knn_weight, blend, t, flag, acc_s, recall_s)
    assert sem_best is not None
    _, l2_sem, knn_weight, blend, sem_threshold, sem_flag, acc_s, recall_s = sem_best
    tuned = Tuned(*tuned_head, blend) if blend else None
    if verbose:
        print(f"semantic head: chose l2={l2_sem:g}, nearness weight {knn_weight}, tuned encoder's "
              f"share {blend}, policy threshold {sem_threshold}, lexicon flag {sem_flag}: dev "
              f"route accuracy {acc_s:.3f}, policy recall {recall_s:.3f}")
    e_rule_train, e_rule_dev = violations(train_rows, e_train), violations(dev_rows, e_dev)
    rule_best: tuple | None = None
    for l2_rule in L2_GRID:
        head, dense_w = fit(x_rule_train, y_rule_train, POLICY_RULES, l2_rule, e_rule_train)
        pred = probabilities(head, x_rule_dev, e_rule_dev, dense_w).argmax(axis=1)
        acc_r = float((pred == y_rule_dev).mean())
        if rule_best is None or acc_r > rule_best[0]:
            rule_best = (acc_r, l2_rule)
    assert rule_best is not None
    acc_r, l2_rule = rule_best
    if verbose:
        print(f"semantic rule head: chose l2={l2_rule:g}: dev rule accuracy {acc_r:.3f}")
    both = train_rows + dev_rows
    x_both, y_both = route_matrix(both)
    route = fit(x_both, y_both, ROUTES, l2)
    x_rule_both, y_rule_both = rule_matrix(both)
    rule = fit(x_rule_both, y_rule_both, POLICY_RULES, l2)
    e_both = np.vstack([e_train, e_dev])
    dense_of = _dense_builder(e_both)
    sem_head, dense_w = fit(x_both, y_both, ROUTES, l2_sem,
                            dense_of(e_both, y_both, knn_weight, own=True))
    sem_rule, rule_dense = fit(x_rule_both, y_rule_both, POLICY_RULES, l2_rule,
                               violations(both, e_both))
    semantic = Semantic(sem_head, dense_w, e_both, y_both, knn_weight, sem_threshold, sem_flag,
                        rule=sem_rule, rule_dense=rule_dense)
    if verbose:
        print(f"refitted on train+dev ({len(both)} messages) in "
              f"{time.perf_counter() - started:.1f}s in all")
    return RouterModel(route, rule, threshold, input_digest(), semantic, tuned)


def violations(rows: list[dict], embeddings: np.ndarray) -> np.ndarray:
    """The rule head's dense inputs: the scaled embeddings of the violations among `rows`, in
    `rule_matrix`'s order."""
    return embeddings[[i for i, row in enumerate(rows) if row["policy"]]] * EMBEDDING_WEIGHT


def tuned_classifier(n_dev: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The tuned encoder's dev probabilities (its adapters fitted on train only) and its shipped
    classifier (fitted on train and dev), from `scripts/tune_router_encoder.py`'s file."""
    with np.load(classifier.ADAPTER_PATH) as data:
        dev = data["dev_probs"]
        if dev.shape != (n_dev, len(ROUTES)):
            raise SystemExit(f"{classifier.ADAPTER_PATH.name} has dev probabilities for "
                             f"{dev.shape[0]} messages, the corpus {n_dev}: run "
                             "scripts/tune_router_encoder.py")
        return dev, (data["head_weights"], data["head_bias"])


def _dense_builder(exemplars: np.ndarray):
    """Dense features against `exemplars`: the embedding and the per-route nearness (with
    `own=True` the rows are the exemplars themselves, and none is its own neighbour)."""

    def build(embeddings: np.ndarray, labels: np.ndarray, knn_weight: float,
              own: bool = False) -> np.ndarray:
        sims = embeddings @ exemplars.T
        if own:
            np.fill_diagonal(sims, -np.inf)
        return dense_features(embeddings, knn_features(sims, labels), knn_weight)

    return build


def compare(fresh: RouterModel, shipped: RouterModel) -> bool:
    """Same inputs, same settings, and weights within a quantisation step of each other."""
    if fresh.input_sha256 != shipped.input_sha256:
        return False
    if not np.isclose(fresh.policy_threshold, shipped.policy_threshold):
        return False
    pairs = [(fresh.route, shipped.route), (fresh.rule, shipped.rule)]
    if (fresh.semantic is None) != (shipped.semantic is None):
        return False
    if fresh.semantic is not None:
        a, b = fresh.semantic, shipped.semantic
        if not np.isclose(a.policy_threshold, b.policy_threshold) or \
                a.knn_weight != b.knn_weight or a.lexicon_flag != b.lexicon_flag:
            return False
        if not np.allclose(a.dense, b.dense, atol=1e-5) or not np.array_equal(a.labels, b.labels):
            return False
        if not np.allclose(a.rule_dense, b.rule_dense, atol=1e-5):
            return False
        if np.abs(a.exemplars - b.exemplars).max() > 1.01 * np.abs(a.exemplars).max() / 127.0:
            return False
        if (fresh.tuned is None) != (shipped.tuned is None) or (fresh.tuned is not None and (
                fresh.tuned.blend != shipped.tuned.blend
                or not np.allclose(fresh.tuned.weights, shipped.tuned.weights))):
            return False
        pairs += [(a.head, b.head), (a.rule, b.rule)]
    for a, b in pairs:
        step = np.abs(a.weights).max(axis=0) / 127.0
        if np.any(np.abs(a.weights - b.weights) > 1.01 * step):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=classifier.MODEL_PATH)
    parser.add_argument("--check", action="store_true",
                        help="retrain and compare with the shipped model instead of writing it")
    args = parser.parse_args()
    model = train()
    if args.check:
        same = compare(model, RouterModel.load(args.out))
        print("the shipped model matches a fresh training run" if same else
              "the shipped model differs from a fresh training run: retrain and commit it")
        return 0 if same else 1
    model.save(args.out)
    print(f"wrote {args.out.relative_to(ROOT)} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
