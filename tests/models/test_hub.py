"""Resolution and search through huggingface_hub against the fake hub (HF_ENDPOINT)."""

from __future__ import annotations

import pytest

from abi_tui.errors import ModelNotFound
from abi_tui.models.errors import OfflineMode
from abi_tui.models.hub import resolve_remote, search_gguf
from abi_tui.models.spec import parse_spec

from .conftest import sha256


@pytest.fixture
def quant_repo(hub, gguf_bytes):
    files = {
        "tiny-Q4_K_M.gguf": gguf_bytes(1),
        "tiny-Q4_K_S.gguf": gguf_bytes(2),
        "tiny-IQ4_XS.gguf": gguf_bytes(3),
        "Q8_0/tiny-Q8_0-00001-of-00002.gguf": gguf_bytes(4),
        "Q8_0/tiny-Q8_0-00002-of-00002.gguf": gguf_bytes(5),
        "mmproj-tiny-f16.gguf": gguf_bytes(6),
        "README.md": b"# tiny",
    }
    hub.add_repo("acme/tiny-GGUF", files, downloads=500, likes=3)
    return files


def test_quant_resolves_among_several(quant_repo) -> None:
    resolved = resolve_remote(parse_spec("acme/tiny-GGUF:q4_k_m"))
    assert [f.path for f in resolved.files] == ["tiny-Q4_K_M.gguf"]
    assert resolved.files[0].sha256 == sha256(quant_repo["tiny-Q4_K_M.gguf"])
    assert resolved.files[0].size == len(quant_repo["tiny-Q4_K_M.gguf"])
    assert resolved.revision == "0123456789abcdef0123456789abcdef01234567"
    assert resolved.files[0].url.endswith(f"/acme/tiny-GGUF/resolve/{resolved.revision}/tiny-Q4_K_M.gguf")
    assert resolved.name == "tiny-Q4_K_M" and resolved.quant == "Q4_K_M"


def test_split_quant_fetches_all_shards_in_order(quant_repo) -> None:
    resolved = resolve_remote(parse_spec("acme/tiny-GGUF:Q8_0"))
    assert [f.path for f in resolved.files] == ["Q8_0/tiny-Q8_0-00001-of-00002.gguf", "Q8_0/tiny-Q8_0-00002-of-00002.gguf"]
    assert resolved.total_size == sum(len(quant_repo[f.path]) for f in resolved.files)
    # Naming one shard fetches the whole split model.
    shard = resolve_remote(parse_spec("acme/tiny-GGUF/Q8_0/tiny-Q8_0-00002-of-00002.gguf"))
    assert [f.path for f in shard.files] == [f.path for f in resolved.files]


def test_unknown_quant_lists_the_available_ones(quant_repo) -> None:
    with pytest.raises(ModelNotFound) as error:
        resolve_remote(parse_spec("acme/tiny-GGUF:Q5_K_M"))
    message = error.value.message
    assert "Q5_K_M is not available" in message
    for quant in ("Q4_K_M", "Q4_K_S", "IQ4_XS", "Q8_0"):
        assert quant in message
    assert "2 files" in message and "mmproj" not in message


def test_repo_without_quant_picks_q4_k_m(quant_repo) -> None:
    assert resolve_remote(parse_spec("acme/tiny-GGUF")).quant == "Q4_K_M"


def test_ambiguous_quant_lists_matches(hub, gguf_bytes) -> None:
    hub.add_repo("acme/twins", {"a-Q4_0.gguf": gguf_bytes(1), "b-Q4_0.gguf": gguf_bytes(2)})
    with pytest.raises(ModelNotFound, match="ambiguous"):
        resolve_remote(parse_spec("acme/twins:Q4_0"))
    with pytest.raises(ModelNotFound, match="several quants"):
        resolve_remote(parse_spec("acme/twins"))


def test_missing_repo_and_offline_mode(hub, monkeypatch) -> None:
    with pytest.raises(ModelNotFound, match="repository not found"):
        resolve_remote(parse_spec("acme/nothing:Q4_K_M"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.log)
    with pytest.raises(OfflineMode, match="HF_HUB_OFFLINE"):
        resolve_remote(parse_spec("acme/nothing:Q4_K_M"))
    assert len(hub.log) == before  # offline means no request at all


def test_search_returns_gguf_repos_with_quant_sizes(quant_repo, hub, gguf_bytes) -> None:
    hub.add_repo("other/tiny-chat-GGUF", {"chat-Q8_0.gguf": gguf_bytes(7)}, downloads=10, likes=50)
    hub.add_repo("other/unrelated", {"x-Q4_0.gguf": gguf_bytes(8)})
    results = search_gguf("tiny", limit=5, sort="downloads")
    assert [r.repo for r in results] == ["acme/tiny-GGUF", "other/tiny-chat-GGUF"]
    first = {q.quant: q for q in results[0].quants}
    assert set(first) == {"Q4_K_M", "Q4_K_S", "IQ4_XS", "Q8_0"}
    assert first["Q8_0"].files == 2
    assert first["Q8_0"].size == len(quant_repo["Q8_0/tiny-Q8_0-00001-of-00002.gguf"]) + len(
        quant_repo["Q8_0/tiny-Q8_0-00002-of-00002.gguf"])
    assert first["Q4_K_M"].spec == "acme/tiny-GGUF:Q4_K_M"
    assert [r.repo for r in search_gguf("tiny", sort="likes")][0] == "other/tiny-chat-GGUF"
    assert len(search_gguf("", limit=1)) == 1
