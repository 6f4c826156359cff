"""Memory items in the chat database: the record of what is remembered, and its BM25 index.

SQLite is the record (the vector store can be rebuilt from it, e.g. for a new embedding model);
FTS5 over each item's normalised terms (memory/lexical.py) is the lexical retriever. Forgetting
blanks an item and takes it out of the index but keeps its id, so that rebuilding from the chat
history never brings a forgotten item back.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from abi_tui.memory.chats import ChatStore
from abi_tui.memory.lexical import idf, match_query, overlap, terms
from abi_tui.memory.sentences import pieces


@dataclass(frozen=True)
class MemoryItem:
    id: str
    conversation_id: str
    role: str
    kind: str
    text: str
    created: float
    message_id: int | None = None
    persona: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QueryTerms:
    """A query as the lexical index sees it: its terms, their idf weights, and which of them
    occur in any stored item (a word nothing stored contains cannot tell items apart)."""

    terms: list[str]
    weights: dict[str, float]
    present: frozenset[str]


@dataclass(frozen=True)
class LexicalHit:
    item: MemoryItem
    bm25: float  # FTS5's score, higher is better here
    overlap: float  # idf-weighted share of the query's terms the item holds (0..1)


def item_id(message_id: int, index: int) -> str:
    """Stable per message, so that storing a message twice stores it once."""
    return f"m{message_id}.{index}"


def items_of_message(*, conversation_id: str, role: str, text: str, message_id: int | None,
                     persona: str | None = None, created: float | None = None) -> list[MemoryItem]:
    created = time.time() if created is None else created
    out = []
    for index, piece in enumerate(pieces(role, text)):
        ident = item_id(message_id, index) if message_id is not None else f"u{time.time_ns()}.{index}"
        out.append(MemoryItem(ident, conversation_id, role, piece.kind, piece.text, created,
                              message_id, persona))
    return out


def _item(row: sqlite3.Row) -> MemoryItem:
    return MemoryItem(row["id"], row["conversation_id"], row["role"], row["kind"], row["text"],
                      row["created"], row["message_id"], row["persona"])


class MemoryItems:
    def __init__(self, chats: ChatStore) -> None:
        self.chats = chats
        self._live: int | None = None  # live items, counted once then kept up to date (idf's N)

    def _live_count(self, db: sqlite3.Connection) -> int:
        if self._live is None:
            self._live = db.execute("SELECT COUNT(*) FROM memory_items WHERE forgotten = 0").fetchone()[0]
        return self._live

    def add(self, items: list[MemoryItem]) -> list[MemoryItem]:
        """Store items; returns those that were new (an id seen before, even forgotten, is not)."""
        def work(db: sqlite3.Connection) -> list[MemoryItem]:
            added = []
            db.execute("BEGIN")
            try:
                for item in items:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO memory_items (id, conversation_id, message_id, role, "
                        "kind, persona, text, terms, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (item.id, item.conversation_id, item.message_id, item.role, item.kind,
                         item.persona, item.text, " ".join(terms(item.text)), item.created))
                    if cur.rowcount:
                        added.append(item)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if self._live is not None:
                self._live += len(added)
            return added
        return self.chats.run(work) if items else []

    def messages_stored(self, message_ids: list[int]) -> set[int]:
        """Which of these messages have been through `add` (items or tombstones)."""
        if not message_ids:
            return set()
        marks = ",".join("?" * len(message_ids))
        rows = self.chats.run(lambda db: db.execute(
            f"SELECT DISTINCT message_id FROM memory_items WHERE message_id IN ({marks})",
            message_ids).fetchall())
        return {row[0] for row in rows}

    def get(self, ids: list[str]) -> dict[str, MemoryItem]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.chats.run(lambda db: db.execute(
            f"SELECT * FROM memory_items WHERE forgotten = 0 AND id IN ({marks})", ids).fetchall())
        return {row["id"]: _item(row) for row in rows}

    def count(self) -> int:
        return self.chats.run(self._live_count)

    def search(self, query: str, *, k: int = 20, exclude_conversation: str | None = None,
               expand: list[str] | None = None) -> tuple[list[LexicalHit], QueryTerms]:
        """BM25 over the items, best first, with each hit's term overlap; and the query's terms
        (to score items that other retrievers found). `expand`: more terms to match (words like
        the query's), which do not count in the overlap."""
        query_terms = terms(query)
        expression = match_query(query_terms + [t for t in (expand or []) if t not in query_terms])
        if expression is None:
            return [], QueryTerms([], {}, frozenset())

        def work(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], dict[str, int], int]:
            rows = db.execute(
                "SELECT m.*, bm25(memory_fts) AS score FROM memory_fts "
                "JOIN memory_items m ON m.rowid = memory_fts.rowid "
                "WHERE memory_fts MATCH ? AND m.conversation_id IS NOT ? "
                "ORDER BY score LIMIT ?", (expression, exclude_conversation, k)).fetchall()
            unique = list(set(query_terms))
            marks = ",".join("?" * len(unique))
            freq = dict(db.execute(f"SELECT term, doc FROM memory_vocab WHERE term IN ({marks})",
                                   unique).fetchall())
            return rows, freq, self._live_count(db)

        rows, freq, total = self.chats.run(work)
        weights = {t: idf(freq.get(t, 0), max(total, 1)) for t in query_terms}
        query = QueryTerms(query_terms, weights, frozenset(t for t in query_terms if freq.get(t)))
        return [LexicalHit(_item(row), -float(row["score"]),
                           overlap(query_terms, set(row["terms"].split()), weights))
                for row in rows], query

    def list(self, *, limit: int = 50, offset: int = 0, conversation_id: str | None = None,
             contains: str | None = None) -> tuple[list[MemoryItem], int]:
        """Newest first, with the total that matches."""
        where, args = ["forgotten = 0"], []
        if conversation_id:
            where.append("conversation_id = ?")
            args.append(conversation_id)
        if contains:
            where.append("text LIKE ? ESCAPE '\\'")
            escaped = contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}%")
        clause = " AND ".join(where)

        def work(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            rows = db.execute(f"SELECT * FROM memory_items WHERE {clause} "
                              "ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                              (*args, limit, offset)).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM memory_items WHERE {clause}", args).fetchone()[0]
            return rows, total

        rows, total = self.chats.run(work)
        return [_item(row) for row in rows], total

    def forget(self, ids: list[str]) -> list[str]:
        """Blank these items and drop them from the index; returns the ids that were live."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))

        def work(db: sqlite3.Connection) -> list[str]:
            live = [row[0] for row in db.execute(
                f"SELECT id FROM memory_items WHERE forgotten = 0 AND id IN ({marks})", ids)]
            if live:
                live_marks = ",".join("?" * len(live))
                db.execute(f"UPDATE memory_items SET forgotten = 1, text = '', terms = '' "
                           f"WHERE id IN ({live_marks})", live)
                if self._live is not None:
                    self._live -= len(live)
            return live
        return self.chats.run(work)

    def iter_live(self, batch: int = 64) -> Iterator[list[MemoryItem]]:
        """Every live item in storage order, in batches (re-embedding)."""
        last = 0
        while True:
            rows = self.chats.run(lambda db, last=last: db.execute(
                "SELECT * FROM memory_items WHERE forgotten = 0 AND rowid > ? ORDER BY rowid LIMIT ?",
                (last, batch)).fetchall())
            if not rows:
                return
            last = rows[-1]["rowid"]
            yield [_item(row) for row in rows]
