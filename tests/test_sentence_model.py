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
    tokens = encoder.tokens(text)
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


# -- the tuned copy: low-rank adapters merged into the packaged weights ---------------------------

QUERY = "encoder.layer.0.attention.self.query.weight"
NORM = "encoder.layer.0.output.LayerNorm.bias"


def _adapter(path, a: np.ndarray, b: np.ndarray, norm: np.ndarray, name: str = QUERY):
    np.savez(path, **{f"lora_a/{name}": a, f"lora_b/{name}": b, f"norm/{NORM}": norm})
    return path


def test_an_adapter_adds_its_low_rank_product_and_replaces_norms(tmp_path):
    tensors = sentence_model.packaged_tensors(sentence_model.source_dir())
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 384)).astype(np.float16), rng.normal(size=(384, 2)).astype(np.float16)
    norm = np.full(384, 0.5, np.float32)
    merged = sentence_model.merged_weights(tensors, _adapter(tmp_path / "a.npz", a, b, norm))
    assert np.allclose(merged[QUERY], tensors[QUERY] + b.astype(np.float32) @ a.astype(np.float32))
    assert np.array_equal(merged[NORM], norm)
    untouched = "encoder.layer.1.attention.self.query.weight"
    assert merged[untouched] is tensors[untouched]


def test_the_tuned_copy_is_cached_per_adapter_and_runs(monkeypatch, tmp_path, encoder):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    zero = _adapter(tmp_path / "zero.npz", np.zeros((2, 384), np.float16),
                    np.zeros((384, 2), np.float16), np.zeros(384, np.float32))
    path = sentence_model.gguf_path(zero)
    assert path is not None and "-tuned-" in path.name and path != sentence_model.gguf_path()
    stamp = path.stat().st_mtime_ns
    assert sentence_model.gguf_path(zero) == path and path.stat().st_mtime_ns == stamp
    tuned = SentenceEncoder(path, normalize=False)
    state = tuned.encode("a sentence")
    assert state.shape == (384,) and abs(float(np.linalg.norm(state)) - 1.0) > 1e-3  # not normalised
    # the zeroed norm bias changed the model: its direction differs from the packaged encoder's
    assert float(state @ encoder.encode("a sentence")) / float(np.linalg.norm(state)) < 0.999


@pytest.mark.parametrize("name, shape, match", [
    ("encoder.layer.9.attention.self.query.weight", (384, 2), "no tensor"),
    (QUERY, (100, 2), "have shapes"),
])
def test_an_adapter_that_does_not_fit_fails_clearly(tmp_path, name, shape, match):
    tensors = sentence_model.packaged_tensors(sentence_model.source_dir())
    bad = _adapter(tmp_path / "bad.npz", np.zeros((2, 384), np.float16),
                   np.zeros(shape, np.float16), np.zeros(384, np.float32), name=name)
    with pytest.raises(sentence_model.SentenceModelError, match=match):
        sentence_model.merged_weights(tensors, bad)
