"""Chat history in SQLite: conversations, messages, routing and timings; memory items (BM25).

Durability: the database runs in WAL mode with synchronous=NORMAL, so every committed
transaction survives the process being killed (not a power cut, which NORMAL trades for speed).
A streaming answer is written as it grows: `append_partial()` buffers tokens in memory and
commits the whole text so far when `flush_interval` (0.25 s) has passed or `flush_bytes` have
piled up, and a background thread flushes a stalled buffer on the same clock. A SIGKILL therefore
loses at most the last ~0.25 s of an answer, and nothing committed before it. When a store is
opened, answers left `streaming` by a process that is gone are marked `incomplete`.

Thread safety: one connection guarded by a lock (`check_same_thread=False`). Statements are
short, so a lock is simpler than a connection per thread and keeps the flusher honest.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abi_tui.errors import AbiError

# One token per process: with the pid it tells "this process, still alive" from "an earlier
# process that happened to get the same pid" (containers restart as pid 1).
_PROCESS_TOKEN = uuid.uuid4().hex[:12]

DEFAULT_TITLE = "New chat"
ROLES = ("system", "user", "assistant")
# Terminal states of an assistant message. `done` is the only complete one.
STATUSES = ("streaming", "done", "incomplete", "cancelled", "error")


class ChatStoreError(AbiError):
    status = 500
    type = "server_error"
    code = "chat_store_error"


class ConversationNotFound(AbiError):
    status = 404
    code = "conversation_not_found"


class MessageNotFound(AbiError):
    status = 404
    code = "message_not_found"


@dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]


# Ordered: version N is MIGRATIONS[N - 1]. Append, never edit a released one.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("conversations and messages", (
        """CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL DEFAULT '',
            persona TEXT,
            routing TEXT,
            model TEXT,
            ttft_ms REAL,
            tokens_per_s REAL,
            total_ms REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            complete INTEGER NOT NULL DEFAULT 1,
            status TEXT NOT NULL DEFAULT 'done',
            finish_reason TEXT,
            error TEXT,
            writer TEXT,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
        "CREATE INDEX messages_streaming ON messages(status) WHERE status = 'streaming'",
        "CREATE INDEX conversations_by_updated ON conversations(updated DESC)",
    )),
    # Memory items (memory/items.py): one row per remembered sentence or span, indexed for BM25
    # by FTS5 over `terms` (normalised words, memory/lexical.py). A forgotten item keeps its row
    # as a tombstone (text blanked, out of the index) so a rebuild never brings it back.
    Migration("memory items with an FTS5 index", (
        """CREATE TABLE memory_items (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL,
            message_id INTEGER,
            role TEXT NOT NULL,
            kind TEXT NOT NULL,
            persona TEXT,
            text TEXT NOT NULL,
            terms TEXT NOT NULL,
            created REAL NOT NULL,
            forgotten INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX memory_items_by_message ON memory_items(message_id)",
        "CREATE INDEX memory_items_by_created ON memory_items(created DESC)",
        """CREATE VIRTUAL TABLE memory_fts USING fts5(
            terms, content='memory_items', content_rowid='rowid', tokenize='unicode61')""",
        "CREATE VIRTUAL TABLE memory_vocab USING fts5vocab(memory_fts, 'row')",
        """CREATE TRIGGER memory_items_ai AFTER INSERT ON memory_items WHEN new.forgotten = 0 BEGIN
            INSERT INTO memory_fts(rowid, terms) VALUES (new.rowid, new.terms); END""",
        """CREATE TRIGGER memory_items_forget AFTER UPDATE OF forgotten ON memory_items
            WHEN old.forgotten = 0 AND new.forgotten = 1 BEGIN
            INSERT INTO memory_fts(memory_fts, rowid, terms) VALUES ('delete', old.rowid, old.terms);
            END""",
        """CREATE TRIGGER memory_items_ad AFTER DELETE ON memory_items WHEN old.forgotten = 0 BEGIN
            INSERT INTO memory_fts(memory_fts, rowid, terms) VALUES ('delete', old.rowid, old.terms);
            END""",
    )),
)


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    created: float
    updated: float
    message_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: str
    role: str
    content: str
    created: float
    updated: float
    persona: str | None = None
    routing: dict[str, Any] | None = None
    model: str | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    complete: bool = True
    status: str = "done"
    finish_reason: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Partial:
    chunks: list[str]
    pending: int  # characters buffered since the last commit
    last_flush: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _writer_gone(writer: str | None) -> bool:
    """True when the process that was streaming a message cannot still be writing it."""
    if not writer:
        return True
    pid_text, _, token = writer.partition(":")
    if token == _PROCESS_TOKEN:
        return False  # another store in this very process may be streaming it
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    return pid == os.getpid() or not _pid_alive(pid)


class ChatStore:
    """Conversations and messages in one SQLite file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike[str], *, flush_interval: float = 0.25,
                 flush_bytes: int = 4096,
                 migrations: Sequence[Migration] = MIGRATIONS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self._clock = clock
        self._lock = threading.RLock()
        self._partials: dict[int, _Partial] = {}
        self._closed = False
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise ChatStoreError(f"cannot open chat database {self.path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self.journal_mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self.schema_version = self._migrate(migrations)
            self.recovered: list[int] = self.mark_incomplete_on_open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ChatStoreError(f"{self.path}: not a usable chat database: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="chat-store-flush",
                                         daemon=True)
        self._flusher.start()

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit buffered text; answers still streaming from this store become incomplete."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.set()
            for message_id in list(self._partials):
                self._flush(message_id)
                self._set_status(message_id, "incomplete")
            self._partials.clear()
            self._db.close()
        self._flusher.join(timeout=2)

    def _migrate(self, migrations: Sequence[Migration]) -> int:
        """Apply pending migrations in order, each in its own transaction; returns the version."""
        db = self._db
        db.execute("""CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied REAL NOT NULL)""")
        # IMMEDIATE: two processes opening a fresh file cannot both migrate it.
        db.execute("BEGIN IMMEDIATE")
        try:
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > len(migrations):
                raise ChatStoreError(
                    f"{self.path} has chat schema version {current}, newer than this abi_tui "
                    f"understands ({len(migrations)}); upgrade abi_tui or use another ABI_HOME")
            for version, migration in enumerate(migrations[current:], start=current + 1):
                for statement in migration.statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                           (version, migration.name, self._clock()))
                current = version
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return current

    def mark_incomplete_on_open(self) -> list[int]:
        """Mark answers left streaming by a dead process as incomplete; returns their ids."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT id, writer FROM messages WHERE status = 'streaming'").fetchall()
            dead = [row["id"] for row in rows if _writer_gone(row["writer"])]
            if dead:
                now = self._clock()
                self._db.executemany(
                    "UPDATE messages SET status = 'incomplete', complete = 0, updated = ? "
                    "WHERE id = ? AND status = 'streaming'", [(now, i) for i in dead])
            return dead

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work(connection)` under the store's lock (for memory/items.py's statements)."""
        with self._lock:
            self._check_open()
            return work(self._db)

    # -- conversations ----------------------------------------------------------------------

    def create_conversation(self, title: str | None = None) -> Conversation:
        now = self._clock()
        conversation_id = uuid.uuid4().hex
        title = title.strip() if title and title.strip() else None
        with self._lock:
            self._check_open()
            self._db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)",
                             (conversation_id, title, now, now))
        return Conversation(conversation_id, title or DEFAULT_TITLE, now, now, 0)

    def get_conversation(self, conversation_id: str) -> Conversation:
        with self._lock:
            self._check_open()
            row = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
                "AS message_count FROM conversations c WHERE c.id = ?",
                (conversation_id,)).fetchone()
        if row is None:
            raise ConversationNotFound(f"no conversation {conversation_id!r}",
                                       param="conversation_id")
        return _conversation(row)

    def list_conversations(self, *, limit: int | None = None, offset: int = 0) -> list[Conversation]:
        """Most recently updated first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) "
                "AS message_count FROM conversations c ORDER BY c.updated DESC, c.rowid DESC "
                "LIMIT ? OFFSET ?", (-1 if limit is None else limit, offset)).fetchall()
        return [_conversation(r) for r in rows]

    def rename_conversation(self, conversation_id: str, title: str) -> Conversation:
        title = title.strip()
        if not title:
            raise ChatStoreError("a conversation title cannot be empty", param="title",
                                 status=400, code="invalid_request")
        with self._lock:
            self._check_open()
            cur = self._db.execute("UPDATE conversations SET title = ?, updated = ? WHERE id = ?",
                                   (title, self._clock(), conversation_id))
            if cur.rowcount == 0:
                raise ConversationNotFound(f"no conversation {conversation_id!r}",
                                           param="conversation_id")
        return self.get_conversation(conversation_id)

    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation and its messages; False if there was none."""
        with self._lock:
            self._check_open()
            for message_id in [i for i, _ in self._partials_of(conversation_id)]:
                self._partials.pop(message_id, None)
            cur = self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return cur.rowcount > 0

    # -- messages ---------------------------------------------------------------------------

    def add_message(self, conversation_id: str, role: str, content: str, *,
                    persona: str | None = None, routing: Mapping[str, Any] | Any = None,
                    model: str | None = None) -> int:
        """Store a finished message of any role; returns its id."""
        if role not in ROLES:
            raise ChatStoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}",
                                 param="role", status=400, code="invalid_request")
        now = self._clock()
        with self._lock:
            self._check_open()
            self._require(conversation_id)
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, persona, routing, model, "
                "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, role, content, persona, _routing_json(routing), model, now, now))
            self._touch(conversation_id, now, first_user_text=content if role == "user" else None)
            return int(cur.lastrowid or 0)

    def add_user_message(self, conversation_id: str, content: str) -> int:
        """A user's message; the first one titles an untitled conversation."""
        return self.add_message(conversation_id, "user", content)

    def begin_assistant(self, conversation_id: str, *, persona: str | None = None,
                        routing: Mapping[str, Any] | Any = None,
                        model: str | None = None) -> int:
        """Start a streaming answer (committed at once, empty); returns its message id.

        `routing` may be a RoutingDecision (anything with to_dict()) or a plain mapping.
        """
        now = self._clock()
        with self._lock:
            self._check_open()
            self._require(conversation_id)
            cur = self._db.execute(
                "INSERT INTO messages (conversation_id, role, content, persona, routing, model, "
                "complete, status, writer, created, updated) "
                "VALUES (?, 'assistant', '', ?, ?, ?, 0, 'streaming', ?, ?, ?)",
                (conversation_id, persona, _routing_json(routing), model,
                 f"{os.getpid()}:{_PROCESS_TOKEN}", now, now))
            message_id = int(cur.lastrowid or 0)
            self._touch(conversation_id, now)
            self._partials[message_id] = _Partial([], 0, time.monotonic())
            return message_id

    def append_partial(self, message_id: int, text: str) -> None:
        """Append streamed text. Cheap: a commit happens at most every `flush_interval`."""
        if not text:
            return
        with self._lock:
            partial = self._partials.get(message_id)
            if partial is None:
                partial = self._adopt(message_id)
            partial.chunks.append(text)
            partial.pending += len(text)
            if (partial.pending >= self.flush_bytes
                    or time.monotonic() - partial.last_flush >= self.flush_interval):
                self._flush(message_id)

    def flush(self, message_id: int | None = None) -> None:
        """Commit buffered text now (one message, or all)."""
        with self._lock:
            self._check_open()
            for i in [message_id] if message_id is not None else list(self._partials):
                if i in self._partials:
                    self._flush(i)

    def finish_assistant(self, message_id: int, *, content: str | None = None,
                         finish_reason: str = "stop", model: str | None = None,
                         usage: Mapping[str, Any] | None = None,
                         timings: Mapping[str, Any] | None = None,
                         error: str | None = None) -> Message:
        """Close a streaming answer with its final text, usage and timings.

        `usage` and `timings` take the shapes of the `abi.end` event:
        {"prompt_tokens", "completion_tokens"} and {"ttft_ms", "total_ms", "tokens_per_s"}.
        finish_reason "stop" or "length" makes the message complete; "cancelled" or "error"
        keeps the partial text, marked with that status.
        """
        usage = usage or {}
        timings = timings or {}
        if finish_reason in ("stop", "length"):
            status = "done"
        elif finish_reason in ("cancelled", "error", "incomplete"):
            status = finish_reason
        else:
            raise ChatStoreError(f"unknown finish_reason {finish_reason!r}",
                                 param="finish_reason", status=400, code="invalid_request")
        with self._lock:
            self._check_open()
            partial = self._partials.pop(message_id, None)
            if content is None:
                if partial is not None:
                    content = "".join(partial.chunks)
                else:
                    content = self.get_message(message_id).content
            now = self._clock()
            cur = self._db.execute(
                "UPDATE messages SET content = ?, status = ?, complete = ?, finish_reason = ?, "
                "model = COALESCE(?, model), ttft_ms = ?, total_ms = ?, tokens_per_s = ?, "
                "prompt_tokens = ?, completion_tokens = ?, error = ?, updated = ? "
                "WHERE id = ? AND role = 'assistant'",
                (content, status, int(status == "done"), finish_reason, model,
                 _num(timings.get("ttft_ms")), _num(timings.get("total_ms")),
                 _num(timings.get("tokens_per_s")), _int(usage.get("prompt_tokens")),
                 _int(usage.get("completion_tokens")), error, now, message_id))
            if cur.rowcount == 0:
                raise MessageNotFound(f"no assistant message {message_id}", param="message_id")
            row = self._db.execute("SELECT conversation_id FROM messages WHERE id = ?",
                                   (message_id,)).fetchone()
            self._touch(row["conversation_id"], now)
        return self.get_message(message_id)

    def get_message(self, message_id: int) -> Message:
        """A message; a streaming one includes text buffered but not yet committed."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise MessageNotFound(f"no message {message_id}", param="message_id")
            message = _message(row)
            partial = self._partials.get(message_id)
            if partial is not None:
                message = _with_content(message, "".join(partial.chunks))
            return message

    def finished_turns(self, limit: int = 200) -> list[tuple[Message, Message]]:
        """The most recent finished turns, newest first: (user message, its complete answer).
        The vector store is rebuilt from these when a crash cut off its writes."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT a.*, (SELECT u.id FROM messages u WHERE u.conversation_id = a.conversation_id "
                "AND u.role = 'user' AND u.id < a.id ORDER BY u.id DESC LIMIT 1) AS user_id "
                "FROM messages a WHERE a.role = 'assistant' AND a.status = 'done' ORDER BY a.id DESC LIMIT ?",
                (limit,)).fetchall()
            turns = []
            for row in rows:
                if row["user_id"] is None:
                    continue
                user = self._db.execute("SELECT * FROM messages WHERE id = ?", (row["user_id"],)).fetchone()
                turns.append((_message(user), _message(row)))
            return turns

    def messages(self, conversation_id: str) -> list[Message]:
        """All messages of a conversation in order (raises if the conversation is unknown)."""
        with self._lock:
            self._check_open()
            self._require(conversation_id)
            rows = self._db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,)).fetchall()
            out = []
            for row in rows:
                message = _message(row)
                partial = self._partials.get(message.id)
                if partial is not None:
                    message = _with_content(message, "".join(partial.chunks))
                out.append(message)
            return out

    # -- export -----------------------------------------------------------------------------

    def export_markdown(self, conversation_id: str) -> str:
        conversation = self.get_conversation(conversation_id)
        lines = [f"# {conversation.title}", ""]
        started = datetime.fromtimestamp(conversation.created, UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines += [f"*Exported from abi_tui: {conversation.message_count} messages, "
                  f"started {started}.*", ""]
        for message in self.messages(conversation_id):
            if message.role == "user":
                heading = "You"
            elif message.role == "system":
                heading = "System"
            else:
                heading = (message.persona or "assistant").capitalize()
                if message.model:
                    heading += f" ({message.model})"
            lines += [f"## {heading}", "", message.content.rstrip() or "*(no text)*", ""]
            if message.role != "assistant":
                continue
            notes = []
            if message.routing and message.routing.get("reason"):
                notes.append(f"routing: {message.routing['reason']}")
            timing = []
            if message.ttft_ms is not None:
                timing.append(f"TTFT {message.ttft_ms:.0f} ms")
            if message.tokens_per_s is not None:
                timing.append(f"{message.tokens_per_s:.1f} tok/s")
            if message.completion_tokens is not None:
                timing.append(f"{message.completion_tokens} tokens")
            if timing:
                notes.append(" · ".join(timing))
            if message.status != "done":
                why = {"incomplete": "the answer was interrupted",
                       "cancelled": "the answer was cancelled",
                       "error": f"the answer failed: {message.error or 'unknown error'}",
                       "streaming": "the answer is still being written"}[message.status]
                notes.append(f"**{message.status}**: {why}")
            if notes:
                lines += [f"> {note}  " for note in notes] + [""]
        return "\n".join(lines).rstrip() + "\n"

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ChatStoreError("the chat store is closed")

    def _require(self, conversation_id: str) -> None:
        if self._db.execute("SELECT 1 FROM conversations WHERE id = ?",
                            (conversation_id,)).fetchone() is None:
            raise ConversationNotFound(f"no conversation {conversation_id!r}",
                                       param="conversation_id")

    def _touch(self, conversation_id: str, now: float, *, first_user_text: str | None = None) -> None:
        self._db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        if first_user_text and first_user_text.strip():
            title = " ".join(first_user_text.split())
            title = title if len(title) <= 60 else title[:59].rstrip() + "…"
            self._db.execute("UPDATE conversations SET title = ? WHERE id = ? AND title IS NULL",
                             (title, conversation_id))

    def _partials_of(self, conversation_id: str) -> list[tuple[int, _Partial]]:
        ids = {row[0] for row in self._db.execute(
            "SELECT id FROM messages WHERE conversation_id = ? AND status = 'streaming'",
            (conversation_id,))}
        return [(i, p) for i, p in self._partials.items() if i in ids]

    def _adopt(self, message_id: int) -> _Partial:
        """Continue a streaming message this store did not begin (e.g. after a restart)."""
        self._check_open()
        row = self._db.execute("SELECT content, status, role FROM messages WHERE id = ?",
                               (message_id,)).fetchone()
        if row is None or row["role"] != "assistant" or row["status"] != "streaming":
            raise MessageNotFound(f"no streaming assistant message {message_id}",
                                  param="message_id")
        partial = _Partial([row["content"]], 0, time.monotonic())
        self._partials[message_id] = partial
        return partial

    def _flush(self, message_id: int) -> None:
        partial = self._partials[message_id]
        if partial.pending == 0:
            partial.last_flush = time.monotonic()
            return
        # One string, one UPDATE, one commit: cheap enough at four per second per stream.
        text = "".join(partial.chunks)
        partial.chunks = [text]
        self._db.execute("UPDATE messages SET content = ?, updated = ? WHERE id = ?",
                         (text, self._clock(), message_id))
        partial.pending = 0
        partial.last_flush = time.monotonic()

    def _set_status(self, message_id: int, status: str) -> None:
        self._db.execute(
            "UPDATE messages SET status = ?, complete = 0, updated = ? "
            "WHERE id = ? AND status = 'streaming'", (status, self._clock(), message_id))

    def _flush_loop(self) -> None:
        """Commit buffers whose stream went quiet, so a stall never holds text back."""
        while not self._wake.wait(self.flush_interval / 2):
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                for message_id, partial in list(self._partials.items()):
                    if partial.pending and now - partial.last_flush >= self.flush_interval:
                        try:
                            self._flush(message_id)
                        except sqlite3.Error:  # retried on the next tick or by append_partial
                            pass


def _conversation(row: sqlite3.Row) -> Conversation:
    return Conversation(row["id"], row["title"] or DEFAULT_TITLE, row["created"], row["updated"],
                        row["message_count"])


def _message(row: sqlite3.Row) -> Message:
    routing = None
    if row["routing"]:
        try:
            routing = json.loads(row["routing"])
        except json.JSONDecodeError:
            routing = None
    return Message(
        id=row["id"], conversation_id=row["conversation_id"], role=row["role"],
        content=row["content"], created=row["created"], updated=row["updated"],
        persona=row["persona"], routing=routing, model=row["model"], ttft_ms=row["ttft_ms"],
        tokens_per_s=row["tokens_per_s"], total_ms=row["total_ms"],
        prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
        complete=bool(row["complete"]), status=row["status"],
        finish_reason=row["finish_reason"], error=row["error"],
    )


def _with_content(message: Message, content: str) -> Message:
    data = asdict(message)
    data["content"] = content
    return Message(**data)


def _routing_json(routing: Any) -> str | None:
    if routing is None:
        return None
    if hasattr(routing, "to_dict"):
        routing = routing.to_dict()
    return json.dumps(routing, ensure_ascii=False, default=str)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
