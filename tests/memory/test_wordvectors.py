"""Word vectors from a GGUF's token embedding table: rows read from the file, centred, and used to
find stored words like a query's and to score soft overlap."""

from __future__ import annotations

import numpy as np
import pytest

from abi_tui.memory.wordvectors import Lexicon, TokenVectors

WORDS = ["dad", "father", "car", "teal", "padding"]


def write_table(path, rows: np.ndarray, dtype) -> None:
    import gguf

    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tensor("token_embd.weight", rows, raw_dtype=dtype)  # quantised: the blocks' bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_similar_words_meet_and_others_do_not(tmp_path, quant):
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(len(WORDS), 64)).astype(np.float32)
    rows[1] = rows[0] + 0.2 * rng.normal(size=64)  # "father" close to "dad"
    kind = gguf.GGMLQuantizationType[quant]
    data = rows if quant == "F32" else quantize(rows, kind)
    path = tmp_path / "table.gguf"
    write_table(path, data, None if quant == "F32" else kind)

    vectors = TokenVectors(path, lambda text: [WORDS.index(text.strip())] if text.strip() in WORDS else [])
    assert vectors.dim == 64
    lexicon = Lexicon(vectors)
    lexicon.add(["My father drives a car.", "I like teal."])
    assert lexicon.neighbours(["dad"], k=2, min_similarity=0.5) == ["father"]
    assert lexicon.neighbours(["car"], k=2, min_similarity=0.5) == []  # itself is not a neighbour
    weight = {"dad": 1.0, "teal": 1.0}.get
    assert lexicon.soft_overlap(["dad"], ["father", "car"], weight) > 0.8
    assert lexicon.soft_overlap(["dad", "teal"], ["father"], weight) == pytest.approx(
        lexicon.soft_overlap(["dad"], ["father"], weight) / 2, abs=0.1)
    assert lexicon.soft_overlap(["teal"], ["car"], weight) < 0.5
