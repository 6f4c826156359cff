"""The one GGUF reader (`gguf_header.read_header`) and the summary built on it, checked against
the gguf package's own reader, on files that stress what the fast path skips."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tiny_gguf import write_not_gguf, write_truncated_gguf

from abi_tui.errors import ModelLoadError
from abi_tui.models.gguf_header import MAX_KEPT_NUMBERS, MAX_KEPT_STRINGS, read_header
from abi_tui.models.gguf_info import read_summary


def write_gguf(path: Path, *, endian=gguf.GGUFEndian.LITTLE, vocab: int = 300) -> Path:
    """A small llama-shaped GGUF with per-layer KV heads and arrays on both sides of the
    kept-array limits."""
    w = gguf.GGUFWriter(path, arch="llama", endianess=endian)
    w.add_name("reader-test")
    w.add_context_length(4096)
    w.add_block_count(3)
    w.add_embedding_length(16)
    w.add_head_count(4)
    w.add_head_count_kv([2, 1, 2])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_token_list([f"tok{i}" for i in range(vocab)])
    w.add_token_scores([float(i) for i in range(MAX_KEPT_NUMBERS + 1)])
    w.add_array("test.short_strings", ["a", "bb", "ccc"])
    w.add_tensor("token_embd.weight", np.ones((vocab, 16), dtype=np.float16))
    w.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_summary_agrees_with_the_gguf_package(tmp_path: Path, tiny_model: Path) -> None:
    for path in (tiny_model, write_gguf(tmp_path / "a.gguf")):
        reference = gguf.GGUFReader(path)
        summary = read_summary(path)
        assert summary.tensors == len(reference.tensors)
        assert summary.parameters == sum(int(t.n_elements) for t in reference.tensors)
        assert summary.weights_bytes == sum(int(t.n_bytes) for t in reference.tensors)
        assert summary.vocab_size == len(reference.fields["tokenizer.ggml.tokens"].data)
        assert summary.architecture == bytes(reference.fields["general.architecture"].parts[-1]).decode()
        header = read_header(path)
        assert header.data_start == reference.data_offset
        assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]


def test_arrays_kept_or_reported_by_length(tmp_path: Path) -> None:
    header = read_header(write_gguf(tmp_path / "a.gguf"))
    assert header.metadata["llama.attention.head_count_kv"] == [2, 1, 2]
    assert header.metadata["test.short_strings"] == ["a", "bb", "ccc"]
    assert header.metadata["tokenizer.ggml.tokens"] == {"array_length": 300}
    assert header.metadata["tokenizer.ggml.scores"] == {"array_length": MAX_KEPT_NUMBERS + 1}
    summary = read_summary(tmp_path / "a.gguf")
    assert (summary.kv_heads_per_layer, summary.head_count_kv, summary.head_count) == ([2, 1, 2], 2, 4)
    assert (summary.quantization, summary.context_length, summary.layers) == ("F16", 4096, 3)
    small = read_summary(write_gguf(tmp_path / "b.gguf", vocab=MAX_KEPT_STRINGS))
    assert small.vocab_size == MAX_KEPT_STRINGS  # a kept list counts the same


def test_big_endian_file_reads_like_little_endian(tmp_path: Path) -> None:
    little = read_header(write_gguf(tmp_path / "le.gguf"))
    big = read_header(write_gguf(tmp_path / "be.gguf", endian=gguf.GGUFEndian.BIG))
    assert big.metadata == little.metadata
    assert [(t.name, t.shape, t.n_bytes) for t in big.tensors] == \
        [(t.name, t.shape, t.n_bytes) for t in little.tensors]


def test_damaged_files_get_a_clear_error(tmp_path: Path, tiny_model: Path) -> None:
    cases = {
        write_not_gguf(tmp_path / "not.gguf"): "is not a GGUF model file",
        write_truncated_gguf(tiny_model, tmp_path / "cut-data.gguf"): "is truncated: tensor",
        tmp_path / "empty.gguf": "only 0 bytes",
        tmp_path / "cut-header.gguf": "its header ends past the end of the file",
        tmp_path / "missing.gguf": "cannot read",
    }
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "cut-header.gguf").write_bytes(tiny_model.read_bytes()[:200])
    for path, message in cases.items():
        for reader in (read_header, read_summary):
            with pytest.raises(ModelLoadError, match=message):
                reader(path)
