"""Append a new batch of labelled messages to the router's corpus, split 60/20/20 when added.

    python scripts/add_corpus_batch.py BATCH.txt [BATCH.txt ...] --seed N

A batch file holds one message a line under header lines `#persona kind [policy]` (a policy
rule id, or nothing); `\\n` in a line stands for a line break inside the message. The new rows
are stratified by (persona, kind, policy): each stratum is shuffled with `--seed` and dealt in
turn (train, train, train, dev, test), continuing the deal across strata, so every stratum's
split is within one row of 60/20/20. Rows already in the corpus never change split; a message
already there is rejected.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "abi_tui" / "personas" / "data" / "corpus.jsonl"
DEAL = ("train", "train", "train", "dev", "test")


def read_batch(path: Path) -> list[dict]:
    rows, header = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line[1:].split()
            header = {"persona": parts[0], "kind": parts[1],
                      "policy": parts[2] if len(parts) > 2 else None}
            continue
        if header is None:
            raise SystemExit(f"{path}:{n}: a message before any #persona kind header")
        rows.append({"text": line.strip().replace("\\n", "\n"), **header})
    return rows


def split(rows: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    strata: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        strata[(row["persona"], row["kind"], row["policy"] or "")].append(row)
    out, turn = [], 0
    for key in sorted(strata):
        group = strata[key]
        rng.shuffle(group)
        for row in group:
            out.append({"text": row["text"], "persona": row["persona"], "kind": row["kind"],
                        "policy": row["policy"], "split": DEAL[turn % len(DEAL)]})
            turn += 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", nargs="+", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    existing = {json.loads(line)["text"] for line in CORPUS.read_text("utf-8").splitlines()}
    rows = [row for path in args.batches for row in read_batch(path)]
    seen = set(existing)
    for row in rows:
        if row["text"] in seen:
            raise SystemExit(f"already in the corpus or the batch: {row['text']!r}")
        seen.add(row["text"])
    new = split(rows, args.seed)
    with CORPUS.open("a", encoding="utf-8") as f:
        for row in new:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {s: sum(r["split"] == s for r in new) for s in ("train", "dev", "test")}
    print(f"appended {len(new)} messages: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
