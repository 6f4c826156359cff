"""Train the persona router's classifier from the labelled corpus (deterministic, CPU, seconds).

    python scripts/train_router.py            # choose settings on dev, train, write the model
    python scripts/train_router.py --check    # retrain and compare with the shipped model

Two multinomial logistic regressions share the features (full-batch Adam on the softmax
cross-entropy with an L2 penalty, classes weighted by inverse frequency): the route head (abbey,
aviva, meta, policy) and the rule head (which policy rule, fitted on violations only). Settings
are chosen on the corpus's `dev` rows with heads fitted on its `train` rows: the L2 strength and
the policy threshold (the route head's `policy` probability at or above which a message is a
violation), minimising dev errors with a missed violation counted `MISS_COST` times; the dev
decisions are the router's, with the lexicon's scores blended in and its policy flag counted. The shipped
heads are then refitted on train and dev together with those settings. The `test` rows are
never read here.

The model is written to `abi_tui/personas/data/router_model.npz` with the threshold and a SHA-256
of its inputs (the corpus, the concept classes, the feature code and this script).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from abi_tui.personas import classifier  # noqa: E402
from abi_tui.personas.classifier import (  # noqa: E402
    DIM,
    POLICY_RULES,
    ROUTES,
    Head,
    RouterModel,
)
from abi_tui.personas.lexicon_scores import distribution, lexicon_tally  # noqa: E402
from abi_tui.personas.router import LEXICON_WEIGHT, policy_rules  # noqa: E402
from abi_tui.personas.signals import analyze  # noqa: E402

CORPUS = ROOT / "abi_tui" / "personas" / "data" / "corpus.jsonl"
L2_GRID = (1e-5, 1e-4)
STEPS = 150
LEARNING_RATE = 0.01
THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.10, 0.61, 0.05))
MISS_COST = 3  # a violation answered as if it were fine is worse than a needless refusal
POLICY = ROUTES.index("policy")


def input_digest() -> str:
    """What the model is a function of: the corpus, the concepts and the code."""
    h = hashlib.sha256()
    for path in (CORPUS, classifier.CONCEPTS_PATH, Path(classifier.__file__), Path(__file__)):
        h.update(path.read_bytes().replace(b"\r\n", b"\n"))
    return h.hexdigest()


def load_corpus() -> list[dict]:
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


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


def fit(x: Sparse, y: np.ndarray, labels: tuple[str, ...], l2: float) -> Head:
    n, k = len(y), len(labels)
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0
    counts = np.bincount(y, minlength=k).astype(np.float32)
    sample_weight = (n / (k * np.maximum(counts, 1.0)))[y][:, None] / n
    w = np.zeros((DIM, k), dtype=np.float32)
    b = np.zeros(k, dtype=np.float32)
    m_w, v_w = np.zeros_like(w), np.zeros_like(w)
    m_b, v_b = np.zeros_like(b), np.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, STEPS + 1):
        logits = x.dot(w) + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) * sample_weight
        grad_w = x.tdot(g) + l2 * w
        grad_b = g.sum(axis=0)
        for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            param -= LEARNING_RATE * (m / (1 - beta1 ** step)) / (
                np.sqrt(v / (1 - beta2 ** step)) + eps)
    return Head(labels, w, b)


def probabilities(head: Head, x: Sparse) -> np.ndarray:
    logits = x.dot(head.weights) + head.bias
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


def decide(p: np.ndarray, threshold: float, lex: Lexicon) -> np.ndarray:
    """The route for each row: policy at or above the threshold (or flagged by the lexicon),
    else the likeliest other with the lexicon's scores blended in."""
    rest = p[:, :POLICY] / p[:, :POLICY].sum(axis=1, keepdims=True)
    rest = (1 - LEXICON_WEIGHT) * rest + LEXICON_WEIGHT * lex.dist
    return np.where((p[:, POLICY] >= threshold) | lex.flag, POLICY, rest.argmax(axis=1))


def scores(p: np.ndarray, y: np.ndarray, threshold: float, lex: Lexicon,
           ) -> tuple[float, float, int]:
    """(route accuracy, policy recall, weighted errors) at a threshold."""
    pred = decide(p, threshold, lex)
    policy = y == POLICY
    missed = int((policy & (pred != POLICY)).sum())
    errors = int((pred != y).sum()) + (MISS_COST - 1) * missed
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
    best: tuple[int, float, float, float, float] | None = None
    for l2 in L2_GRID:
        p_dev = probabilities(fit(x_train, y_train, ROUTES, l2), x_dev)
        for threshold in THRESHOLDS:
            acc, recall, errors = scores(p_dev, y_dev, threshold, lex_dev)
            if best is None or errors < best[0]:
                best = (errors, l2, threshold, acc, recall)
    assert best is not None
    _, l2, threshold, acc, recall = best
    rule_dev = probabilities(fit(*rule_matrix(train_rows), POLICY_RULES, l2),
                             rule_matrix(dev_rows)[0]).argmax(axis=1)
    rule_acc = float((rule_dev == rule_matrix(dev_rows)[1]).mean())
    if verbose:
        print(f"chose l2={l2:g}, policy threshold {threshold}: with heads fitted on train, dev "
              f"route accuracy {acc:.3f}, policy recall {recall:.3f}, rule accuracy {rule_acc:.3f}")
    both = train_rows + dev_rows
    route = fit(*route_matrix(both), ROUTES, l2)
    rule = fit(*rule_matrix(both), POLICY_RULES, l2)
    if verbose:
        print(f"refitted on train+dev ({len(both)} messages) in "
              f"{time.perf_counter() - started:.1f}s in all")
    return RouterModel(route, rule, threshold, input_digest())


def compare(fresh: RouterModel, shipped: RouterModel) -> bool:
    """Same inputs, same settings, and weights within a quantisation step of each other."""
    if fresh.input_sha256 != shipped.input_sha256:
        return False
    if not np.isclose(fresh.policy_threshold, shipped.policy_threshold):
        return False
    for a, b in ((fresh.route, shipped.route), (fresh.rule, shipped.rule)):
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
