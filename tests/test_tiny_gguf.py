"""The tiny GGUF writer produces a model llama.cpp loads fast and samples safely."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_gguf import (
    BOS_ID,
    DEFAULT_CHAT_TEMPLATE,
    LLAMA_KWARGS,
    allowed_token_ids,
    write_not_gguf,
    write_tiny_gguf,
    write_truncated_gguf,
)

PRINTABLE = {chr(t) for t in allowed_token_ids()}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, **LLAMA_KWARGS)
    yield model
    model.close()


def test_file_is_small_and_reproducible(model_path: Path, tmp_path: Path) -> None:
    assert model_path.stat().st_size < 400_000
    again = write_tiny_gguf(tmp_path / "again.gguf")
    assert again.read_bytes() == model_path.read_bytes()
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert other.read_bytes() != model_path.read_bytes()


def test_metadata(model_path: Path, tmp_path: Path) -> None:
    reader = gguf.GGUFReader(model_path)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.chat_template"].contents() == DEFAULT_CHAT_TEMPLATE
    bare = gguf.GGUFReader(write_tiny_gguf(tmp_path / "bare.gguf", chat_template=None))
    assert "tokenizer.chat_template" not in bare.fields


def test_loads_in_milliseconds(model_path: Path) -> None:
    start = time.perf_counter()
    model = llama_cpp.Llama(model_path=str(model_path), **LLAMA_KWARGS)
    elapsed = time.perf_counter() - start
    model.close()
    assert elapsed < 1.0  # ~5 ms in practice; generous for loaded CI machines


UNICODE_SAMPLES = [
    "",
    "hello world",
    " leading space",
    "héllo wörld — ünïcödé",
    "日本語のテキスト 世界",
    "emoji 🎉👩‍👩‍👧 and flags 🇫🇷",
    "e\u0301 combining, zero\u200bwidth",
    "control \x00\x01\t\r\n\x7f chars",
    "<s></s><|im_start|>literal specials<|im_end|>",
]


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_tokenize_is_one_token_per_byte(llm: llama_cpp.Llama, text: str) -> None:
    data = text.encode()
    tokens = llm.tokenize(data, add_bos=False)
    assert tokens == list(data)
    assert llm.detokenize(tokens) == data
    assert llm.tokenize(data, add_bos=True) == [BOS_ID, *data]


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text())
def test_tokenize_round_trips_any_text(llm: llama_cpp.Llama, text: str) -> None:
    data = text.encode()
    tokens = llm.tokenize(data, add_bos=False)
    assert len(tokens) == len(data)
    assert llm.detokenize(tokens) == data


def test_stream_yields_one_chunk_per_token(llm: llama_cpp.Llama) -> None:
    stamps: list[float] = []
    texts: list[str] = []
    finish = None
    start = time.perf_counter()
    for chunk in llm.create_completion(
        "Hello", max_tokens=32, temperature=1.0, seed=7, stream=True
    ):
        choice = chunk["choices"][0]
        if choice["text"]:
            texts.append(choice["text"])
            stamps.append(time.perf_counter())
        finish = choice["finish_reason"]
    # Nothing is held back: every token arrives as its own one-character chunk, then a final
    # empty chunk carries finish_reason.
    assert len(texts) == 32
    assert all(len(t) == 1 for t in texts)
    assert finish == "length"
    gaps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)]
    assert max(gaps) < 1.0
    full = llm.create_completion("Hello", max_tokens=32, temperature=1.0, seed=7)
    assert full["usage"]["completion_tokens"] == 32
    assert full["choices"][0]["text"] == "".join(texts)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampling_emits_only_printable_ascii(llm: llama_cpp.Llama, temperature: float) -> None:
    for seed in (1, 2):
        # top_k/top_p/min_p disabled so the whole distribution is in play.
        out = llm.create_completion(
            "Once upon a time, 世界 🎉",
            max_tokens=800,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            seed=seed,
        )
        text = out["choices"][0]["text"]
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == len(text) == 800
        assert set(text) <= PRINTABLE
        assert len(set(text)) > 40


def test_without_newline(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "nonl.gguf", seed=3, allow_newline=False)
    model = llama_cpp.Llama(model_path=str(path), **LLAMA_KWARGS)
    out = model.create_completion("\n\n", max_tokens=400, temperature=2.0, top_k=0, seed=1)
    model.close()
    text = out["choices"][0]["text"]
    assert len(text) == 400
    assert all(" " <= c <= "~" for c in text)


def test_greedy_is_deterministic_and_varied(model_path: Path, llm: llama_cpp.Llama) -> None:
    first = llm.create_completion("The answer is", max_tokens=64, temperature=0.0)
    text = first["choices"][0]["text"]
    assert len(text) == 64
    assert len(set(text)) >= 16
    fresh = llama_cpp.Llama(model_path=str(model_path), seed=123, **LLAMA_KWARGS)
    again = fresh.create_completion("The answer is", max_tokens=64, temperature=0.0)
    fresh.close()
    assert again["choices"][0]["text"] == text


def test_same_seed_same_sample(llm: llama_cpp.Llama) -> None:
    def sample(seed: int) -> str:
        out = llm.create_completion("abc", max_tokens=48, temperature=1.0, seed=seed)
        return out["choices"][0]["text"]

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_chat_template_is_used(llm: llama_cpp.Llama) -> None:
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=16, temperature=0.0
    )
    # "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" with each marker one special
    # token: the template was rendered and parsed. No BOS: llama-cpp-python's Jinja formatter
    # reports the template as having added its own specials, and this template adds none.
    assert out["usage"]["prompt_tokens"] == 1 + 5 + 2 + 1 + 1 + 1 + 10
    assert len(out["choices"][0]["message"]["content"]) == 16


def test_corrupt_files_do_not_load(model_path: Path, tmp_path: Path) -> None:
    not_gguf = write_not_gguf(tmp_path / "not.gguf")
    truncated = write_truncated_gguf(model_path, tmp_path / "truncated.gguf")
    assert gguf.GGUFReader(model_path).data_offset < truncated.stat().st_size
    assert truncated.stat().st_size < model_path.stat().st_size
    assert truncated.read_bytes() == model_path.read_bytes()[: truncated.stat().st_size]
    for path in (not_gguf, truncated):
        with pytest.raises(ValueError):
            llama_cpp.Llama(model_path=str(path), **LLAMA_KWARGS)
