"""The packaged sentence encoder: converted once from the installed package, loaded by llama.cpp,
and meaningful (a paraphrase is nearer than an unrelated sentence)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from abi_tui.models import sentence_model
from abi_tui.models.sentence_encoder import MAX_TOKENS, SentenceEncoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> SentenceEncoder:
    src = sentence_model.source_dir()
    assert src is not None, f"the packaged sentence model is missing: {sentence_model.INSTALL_HINT}"
    out = tmp_path_factory.mktemp("sentence") / "minilm.gguf"
    sentence_model.convert(src, out)
    return SentenceEncoder(out)


def test_paraphrase_is_nearer_than_an_unrelated_sentence(encoder):
    a = encoder.encode("I bought a new bike last week")
    para = encoder.encode("what did I purchase recently?")
    other = encoder.encode("what is the capital of France?")
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-4
    assert float(a @ para) > float(a @ other) + 0.2


def test_long_input_is_capped_head_and_tail(encoder):
    text = "start " + "filler " * 1000 + "finish"
    tokens = encoder._tokens(text)
    assert len(tokens) == MAX_TOKENS
    words = encoder._model.detokenize(tokens[1:-1]).decode()
    assert words.split()[0] == "start" and words.split()[-1] == "finish"
    assert encoder.encode(text).shape == (encoder.dim,)


def test_same_text_is_embedded_once(encoder):
    first = encoder.encode("a sentence to cache")
    assert encoder.encode("a sentence to cache") is first


def test_conversion_is_cached_per_version(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = sentence_model.gguf_path()
    assert path is not None and path.parent == tmp_path / "abi_tui" / "sentence"
    stamp = path.stat().st_mtime_ns
    assert sentence_model.gguf_path() == path and path.stat().st_mtime_ns == stamp


def test_a_damaged_package_fails_clearly_and_leaves_no_partial_file(tmp_path):
    src = tmp_path / "model"
    shutil.copytree(sentence_model.source_dir(), src)
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    with pytest.raises(sentence_model.SentenceModelError, match="not a safetensors file"):
        sentence_model.convert(src, out)
    assert list(out.parent.iterdir()) == []


def test_loading_leaves_the_process_stderr_alone(encoder, monkeypatch):
    """llama-cpp-python's quiet mode points fd 2 at /dev/null while it loads, which swallowed
    what the server's other threads logged meanwhile (a failed start-up model, for one)."""
    import os

    redirected = []
    real_dup2 = os.dup2
    monkeypatch.setattr(os, "dup2", lambda fd, fd2, *a: redirected.append(fd2) or real_dup2(fd, fd2, *a))
    again = SentenceEncoder(encoder.path)
    assert redirected == []
    assert np.array_equal(again.encode("the same sentence"), encoder.encode("the same sentence"))
