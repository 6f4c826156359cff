"""The SQLite chat store: migrations, WAL, CRUD, streaming answers and surviving a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from abi_tui.memory.chats import (
    MIGRATIONS,
    ChatStore,
    ChatStoreError,
    ConversationNotFound,
    MessageNotFound,
    Migration,
)
from abi_tui.personas.router import route

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "abi" / "chats.db"


@pytest.fixture
def store(db: Path):
    with ChatStore(db) as s:
        yield s


def raw(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    return conn


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- schema -----------------------------------------------------------------------------------

def test_migrations_from_an_empty_file(db: Path):
    db.parent.mkdir(parents=True)
    db.touch()  # an empty file is a valid, empty SQLite database
    with ChatStore(db) as store:
        assert store.schema_version == len(MIGRATIONS)
    with raw(db) as conn:
        versions = [tuple(r)[:2] for r in conn.execute("SELECT version, name FROM schema_version")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert versions == [(i, m.name) for i, m in enumerate(MIGRATIONS, start=1)]
    assert {"conversations", "messages", "schema_version", "memory_items", "memory_fts"} <= tables


def test_reopening_applies_only_new_migrations_in_order(db: Path):
    with ChatStore(db) as store:
        cid = store.create_conversation("kept").id
    extra = (
        Migration("tags", ("CREATE TABLE tags (conversation_id TEXT, tag TEXT)",)),
        Migration("tag index", ("CREATE INDEX tags_by_tag ON tags(tag)",)),
    )
    with ChatStore(db, migrations=MIGRATIONS + extra) as store:
        assert store.schema_version == len(MIGRATIONS) + 2
        assert store.get_conversation(cid).title == "kept"
    with raw(db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")] \
            == list(range(1, len(MIGRATIONS) + 3))


def test_a_failing_migration_changes_nothing(db: Path):
    ChatStore(db).close()
    broken = MIGRATIONS + (Migration("half", ("CREATE TABLE half (x)", "NOT SQL AT ALL")),)
    with pytest.raises(ChatStoreError):
        ChatStore(db, migrations=broken)
    with raw(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='half'").fetchone() is None


def test_a_newer_schema_is_refused_with_a_clear_message(db: Path):
    ChatStore(db).close()
    with raw(db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    with pytest.raises(ChatStoreError, match="newer than this abi_tui"):
        ChatStore(db)


def test_not_a_database_is_a_clear_error(db: Path):
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ChatStoreError, match="not a usable chat database"):
        ChatStore(db)


def test_wal_mode(store: ChatStore, db: Path):
    assert store.journal_mode == "wal"
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- conversations ------------------------------------------------------------------------------

def test_create_rename_list_delete(store: ChatStore):
    first = store.create_conversation()
    assert first.title == "New chat"
    second = store.create_conversation("  Rust questions ")
    assert second.title == "Rust questions"
    assert [c.id for c in store.list_conversations()] == [second.id, first.id]

    store.add_user_message(first.id, "How do I   tune\nPostgres autovacuum for a write-heavy table?")
    listed = store.list_conversations()
    assert listed[0].id == first.id  # most recently updated first
    assert listed[0].title == "How do I tune Postgres autovacuum for a write-heavy table?"
    assert listed[0].message_count == 1
    assert [c.id for c in store.list_conversations(limit=1, offset=1)] == [second.id]

    renamed = store.rename_conversation(first.id, "Autovacuum")
    assert renamed.title == "Autovacuum"
    store.add_user_message(first.id, "another question")
    assert store.get_conversation(first.id).title == "Autovacuum"  # a title is kept

    assert store.delete_conversation(first.id) is True
    assert store.delete_conversation(first.id) is False
    with pytest.raises(ConversationNotFound):
        store.get_conversation(first.id)
    with pytest.raises(ConversationNotFound):
        store.add_user_message(first.id, "hi")
    with pytest.raises(ChatStoreError):
        store.rename_conversation(second.id, "   ")


def test_long_first_message_makes_a_short_title(store: ChatStore):
    cid = store.create_conversation().id
    store.add_user_message(cid, "word " * 50)
    title = store.get_conversation(cid).title
    assert len(title) <= 60 and title.endswith("…")


def test_delete_cascades_to_messages(store: ChatStore, db: Path):
    cid = store.create_conversation().id
    store.add_user_message(cid, "hello")
    mid = store.begin_assistant(cid, persona="abbey")
    store.append_partial(mid, "hi")
    store.delete_conversation(cid)
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(MessageNotFound):
        store.get_message(mid)


# -- messages ---------------------------------------------------------------------------------

def test_streaming_answer_with_routing_and_timings(store: ChatStore):
    cid = store.create_conversation().id
    uid = store.add_user_message(cid, "write a python function that sorts a list")
    decision = route("write a python function that sorts a list")
    mid = store.begin_assistant(cid, persona=decision.persona, routing=decision, model="mock/constant_rate")
    assert mid > uid
    streaming = store.get_message(mid)
    assert (streaming.status, streaming.complete, streaming.content) == ("streaming", False, "")
    for token in ["def ", "sort", "(xs):", "\n    return sorted(xs)"]:
        store.append_partial(mid, token)
    assert store.get_message(mid).content == "def sort(xs):\n    return sorted(xs)"

    done = store.finish_assistant(
        mid, usage={"prompt_tokens": 9, "completion_tokens": 4},
        timings={"ttft_ms": 12.5, "total_ms": 40.0, "tokens_per_s": 100.0})
    assert done.status == "done" and done.complete is True and done.finish_reason == "stop"
    assert done.content == "def sort(xs):\n    return sorted(xs)"
    assert (done.prompt_tokens, done.completion_tokens) == (9, 4)
    assert (done.ttft_ms, done.total_ms, done.tokens_per_s) == (12.5, 40.0, 100.0)
    assert done.persona == "aviva" and done.model == "mock/constant_rate"
    assert done.routing["persona"] == "aviva" and done.routing["reason"] == decision.reason

    roles = [(m.role, m.complete) for m in store.messages(cid)]
    assert roles == [("user", True), ("assistant", True)]
    json.dumps([m.to_dict() for m in store.messages(cid)])


def test_final_content_and_cancel(store: ChatStore):
    cid = store.create_conversation().id
    a = store.begin_assistant(cid)
    store.append_partial(a, "draft")
    assert store.finish_assistant(a, content="final text").content == "final text"
    b = store.begin_assistant(cid)
    store.append_partial(b, "half an ans")
    cancelled = store.finish_assistant(b, finish_reason="cancelled")
    assert (cancelled.status, cancelled.complete, cancelled.content) == ("cancelled", False, "half an ans")
    c = store.begin_assistant(cid)
    failed = store.finish_assistant(c, finish_reason="error", error="backend timed out")
    assert failed.status == "error" and failed.error == "backend timed out"
    length = store.finish_assistant(store.begin_assistant(cid), finish_reason="length")
    assert length.complete is True
    with pytest.raises(ChatStoreError):
        store.finish_assistant(store.begin_assistant(cid), finish_reason="bogus")
    with pytest.raises(MessageNotFound):
        store.finish_assistant(12345)
    with pytest.raises(MessageNotFound):
        store.append_partial(a, "more")  # finished: not streaming any more


def test_partial_text_is_committed_on_the_size_threshold(db: Path):
    with ChatStore(db, flush_interval=60, flush_bytes=16) as store:
        cid = store.create_conversation().id
        mid = store.begin_assistant(cid)
        store.append_partial(mid, "0123456789")
        with raw(db) as conn:
            assert conn.execute("SELECT content FROM messages WHERE id=?", (mid,)).fetchone()[0] == ""
        store.append_partial(mid, "abcdefghij")
        with raw(db) as conn:
            assert conn.execute("SELECT content FROM messages WHERE id=?", (mid,)).fetchone()[0] \
                == "0123456789abcdefghij"


def test_a_stalled_stream_is_committed_by_the_background_flusher(db: Path):
    with ChatStore(db, flush_interval=0.05, flush_bytes=1 << 20) as store:
        cid = store.create_conversation().id
        mid = store.begin_assistant(cid)
        store.append_partial(mid, "first")  # may or may not flush at once
        store.append_partial(mid, " second")  # buffered, and then the stream goes quiet

        def committed() -> bool:
            with raw(db) as conn:
                row = conn.execute("SELECT content FROM messages WHERE id=?", (mid,)).fetchone()
            return row[0] == "first second"

        assert wait_for(committed)


def test_another_process_sees_streaming_text_and_is_not_marked(db: Path, store: ChatStore):
    cid = store.create_conversation().id
    mid = store.begin_assistant(cid)
    store.append_partial(mid, "live")
    store.flush()
    # A second store in this same process (a reader) must not mark a live answer incomplete.
    with ChatStore(db) as reader:
        assert reader.recovered == []
        assert reader.get_message(mid).status == "streaming"
        assert reader.get_message(mid).content == "live"


def test_open_marks_answers_of_dead_writers_incomplete(db: Path):
    with ChatStore(db) as store:
        cid = store.create_conversation().id
        store.add_user_message(cid, "question")
        mid = store.begin_assistant(cid, persona="abbey")
        store.append_partial(mid, "partial answer")
        store.flush()
        with raw(db) as conn:  # as if another process (long gone) had been writing it
            conn.execute("UPDATE messages SET writer='999999999:deadbeef' WHERE id=?", (mid,))
        # The store itself keeps its buffer; drop it to stand for the dead writer.
        store._partials.clear()
    with ChatStore(db) as store:
        assert store.recovered == [mid]
        message = store.get_message(mid)
        assert (message.status, message.complete, message.content) == ("incomplete", False, "partial answer")
    with ChatStore(db) as store:
        assert store.recovered == []


def test_close_marks_own_unfinished_answers_incomplete(db: Path):
    store = ChatStore(db, flush_interval=60)
    cid = store.create_conversation().id
    mid = store.begin_assistant(cid)
    store.append_partial(mid, "unflushed")
    store.close()
    store.close()  # idempotent
    with ChatStore(db) as again:
        message = again.get_message(mid)
        assert (message.status, message.content) == ("incomplete", "unflushed")
    for call in (lambda: store.begin_assistant(cid), store.list_conversations,
                 lambda: store.add_user_message(cid, "x"), lambda: store.get_message(mid)):
        with pytest.raises(ChatStoreError, match="closed"):
            call()


def test_export_markdown(store: ChatStore):
    cid = store.create_conversation("Sorting").id
    store.add_user_message(cid, "sort a list in python")
    decision = route("sort a list in python")
    mid = store.begin_assistant(cid, persona="aviva", routing=decision, model="gemma-270m")
    store.append_partial(mid, "```python\nsorted(xs)\n```")
    store.finish_assistant(mid, usage={"completion_tokens": 7},
                           timings={"ttft_ms": 80, "tokens_per_s": 42.25})
    store.add_user_message(cid, "and descending?")
    cut = store.begin_assistant(cid, persona="aviva")
    store.append_partial(cut, "Use `reverse=True`")
    store.finish_assistant(cut, finish_reason="cancelled")
    text = store.export_markdown(cid)
    assert text.startswith("# Sorting\n")
    assert "## You\n\nsort a list in python" in text
    assert "## Aviva (gemma-270m)\n\n```python\nsorted(xs)\n```" in text
    assert f"routing: {decision.reason}" in text
    assert "TTFT 80 ms · 42.2 tok/s · 7 tokens" in text
    assert "**cancelled**: the answer was cancelled" in text
    with pytest.raises(ConversationNotFound):
        store.export_markdown("nope")


def test_concurrent_writers_from_threads(store: ChatStore):
    cid = store.create_conversation().id
    errors: list[BaseException] = []

    def chat(n: int) -> None:
        try:
            for i in range(25):
                store.add_user_message(cid, f"{n}-{i}")
                mid = store.begin_assistant(cid, persona="abbey")
                for token in "abc":
                    store.append_partial(mid, token)
                store.finish_assistant(mid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    messages = store.messages(cid)
    assert len(messages) == 6 * 25 * 2
    assert all(m.content == "abc" for m in messages if m.role == "assistant")


# -- the process is killed mid-answer -------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from abi_tui.memory.chats import ChatStore
    store = ChatStore(sys.argv[1])
    cid = store.create_conversation("killed mid-answer").id
    store.add_user_message(cid, "first question")
    first = store.begin_assistant(cid, persona="aviva")
    store.append_partial(first, "first answer")
    store.finish_assistant(first, usage={"completion_tokens": 2})
    store.add_user_message(cid, "second question")
    mid = store.begin_assistant(cid, persona="abbey", model="mock")
    print("READY", cid, mid, flush=True)
    i = 0
    while True:
        store.append_partial(mid, f"tok{i} ")
        i += 1
        print(f"{time.monotonic():.6f} {i}", flush=True)
        time.sleep(0.004)
""")


def test_partial_answer_survives_sigkill(db: Path):
    db.parent.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        ready = child.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        cid, mid = ready[1], int(ready[2])
        progress: list[tuple[float, int]] = []
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            line = child.stdout.readline()
            assert line, "child exited early"
            t, n = line.split()
            progress.append((float(t), int(n)))
        child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        progress += [(float(t), int(n)) for t, n in (ln.split() for ln in child.stdout)]
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    with ChatStore(db) as store:
        assert store.recovered == [mid]
        messages = store.messages(cid)
    assert [(m.role, m.content, m.status) for m in messages[:3]] == [
        ("user", "first question", "done"),
        ("assistant", "first answer", "done"),
        ("user", "second question", "done"),
    ]
    answer = messages[3]
    assert (answer.id, answer.status, answer.complete) == (mid, "incomplete", False)
    appended = max(n for _, n in progress)
    saved = answer.content.count("tok")
    assert answer.content == "".join(f"tok{k} " for k in range(saved))  # a clean prefix
    assert saved <= appended
    # Everything appended more than half a second before the kill was committed.
    due = max((n for t, n in progress if t <= killed_at - 0.5), default=0)
    assert due > 0 and saved >= due, (saved, due, appended)
