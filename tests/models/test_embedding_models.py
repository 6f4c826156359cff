"""Embedding models are told from chat models by their GGUF metadata (architecture, pooling type),
and `abi model list` marks them."""

from __future__ import annotations

import numpy as np

from abi_tui.cli import main
from abi_tui.models.gguf_info import GGUFSummary, read_summary


def write_encoder_gguf(path, *, arch: str = "nomic-bert", pooling: int | None = 1):
    import gguf

    w = gguf.GGUFWriter(path, arch=arch)
    w.add_name("tiny-embed")
    w.add_context_length(512)
    w.add_embedding_length(8)
    w.add_block_count(1)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_architecture_or_pooling_type_marks_an_embedding_model(tmp_path, tiny_model):
    assert read_summary(write_encoder_gguf(tmp_path / "a.gguf")).is_embedding_model
    # A decoder architecture with a pooling type (e.g. a Qwen3 embedding model) is one too.
    assert read_summary(write_encoder_gguf(tmp_path / "b.gguf", arch="qwen3", pooling=3)).is_embedding_model
    assert not read_summary(tiny_model).is_embedding_model
    assert not GGUFSummary(architecture="llama").is_embedding_model
    assert GGUFSummary(architecture="bert").is_embedding_model  # a sidecar from before pooling_type


def test_model_list_marks_embedding_models(abi_home, tiny_model, capsys):
    models = abi_home / "models"
    models.mkdir(exist_ok=True)
    write_encoder_gguf(models / "nomic-embed-text-v1.5.Q4_K_M.gguf")
    (models / "tiny.gguf").write_bytes(tiny_model.read_bytes())
    assert main(["model", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert lines["nomic-embed-text-v1.5.Q4_K_M"].rstrip().endswith("embedding")
    assert not lines["tiny"].rstrip().endswith("embedding")
    assert main(["model", "list", "--json"]) == 0
    listed = {m["short_name"]: m["embedding"] for m in __import__("json").loads(capsys.readouterr().out)}
    assert listed == {"nomic-embed-text-v1.5.Q4_K_M": True, "tiny": False}
