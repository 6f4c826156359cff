"""Spec parsing and quant matching: every spec form the README lists, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_tui.errors import AbiError
from abi_tui.models import quants
from abi_tui.models.progress import RateMeter
from abi_tui.models.spec import parse_spec

HUB = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("text", "kind", "repo", "quant", "filename", "revision"),
    [
        ("unsloth/gemma-3-270m-it-GGUF:Q4_K_M", "hub", "unsloth/gemma-3-270m-it-GGUF", "Q4_K_M", None, None),
        ("bartowski/Qwen2.5-7B-GGUF", "hub", "bartowski/Qwen2.5-7B-GGUF", None, None, None),
        ("acme/tiny@v1.0:q8_0", "hub", "acme/tiny", "q8_0", None, "v1.0"),
        ("acme/tiny/sub/model-Q4_K_M.gguf", "hub", "acme/tiny", None, "sub/model-Q4_K_M.gguf", None),
        ("hf://acme/tiny/model.gguf", "hub", "acme/tiny", None, "model.gguf", None),
        ("hf://acme/tiny:IQ4_XS", "hub", "acme/tiny", "IQ4_XS", None, None),
        (f"{HUB}/acme/tiny/resolve/main/m-Q4_K_M.gguf", "hub", "acme/tiny", None, "m-Q4_K_M.gguf", "main"),
        (f"{HUB}/acme/tiny/blob/abc123/dir/m.gguf", "hub", "acme/tiny", None, "dir/m.gguf", "abc123"),
        ("https://example.invalid/files/model.gguf?download=1", "url", None, None, "model.gguf", None),
        ("gemma-3-270m-it-Q4_K_M", "name", None, None, None, None),
        ("llama3.2:latest", "name", None, None, None, None),
    ],
)
def test_spec_forms(text, kind, repo, quant, filename, revision) -> None:
    spec = parse_spec(text, endpoint=HUB)
    assert (spec.kind, spec.repo, spec.quant, spec.filename, spec.revision) == (kind, repo, quant, filename, revision)


def test_local_paths_are_paths(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert parse_spec(str(model)).kind == "path"
    assert parse_spec("./missing.gguf").kind == "path"
    assert parse_spec("~/models/x.gguf").path == Path("~/models/x.gguf").expanduser()


def test_bad_specs_are_user_errors() -> None:
    with pytest.raises(AbiError):
        parse_spec("  ")
    with pytest.raises(AbiError):
        parse_spec("hf://not a repo")
    with pytest.raises(AbiError, match="--quant"):
        parse_spec("acme/tiny/model.gguf").with_quant("Q4_K_M")


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("Qwen2.5-7B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("model.q8_0.gguf", "Q8_0"),
        ("Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
        ("gemma-3-27b-it-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
        ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("phi-3-mini-4k-instruct-fp16.gguf", "FP16"),
        ("Qwen2-7B.gguf", None),
    ],
)
def test_quant_labels(name: str, label: str | None) -> None:
    assert quants.quant_label(name) == label


def test_groups_split_files_and_matches_quants() -> None:
    files = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf", "Q8_0/m-Q8_0-00001-of-00002.gguf",
             "mmproj-m-f16.gguf", "README.md", "m-UD-Q4_K_XL.gguf"]
    groups = quants.group_files(files)
    assert [g.quant for g in groups] == ["Q8_0", "Q4_K_M", "Q4_K_S", "UD-Q4_K_XL"]
    split = quants.match_quant(groups, "q8_0")
    assert [g.files for g in split] == [["Q8_0/m-Q8_0-00001-of-00002.gguf", "Q8_0/m-Q8_0-00002-of-00002.gguf"]]
    assert [g.quant for g in quants.match_quant(groups, "Q4_K_XL")] == ["UD-Q4_K_XL"]
    assert quants.match_quant(groups, "Q5_K_M") == []
    assert quants.default_group(groups).quant == "Q4_K_M"
    described = quants.describe_groups(groups, {f: 1_500_000 for f in files})
    assert "Q8_0 (3.0 MB, 2 files)" in described and "Q4_K_M (1.5 MB)" in described


def test_rate_is_over_the_last_ten_seconds() -> None:
    now = [0.0]
    meter = RateMeter(window_s=10.0, clock=lambda: now[0])
    for second in range(0, 31):
        now[0] = float(second)
        # 1000 B/s for 20 s, then 100 B/s
        meter.add(1000 * second if second <= 20 else 20_000 + 100 * (second - 20))
    # 10 s after the slowdown the rate shows only the slow part, not the 30 s average (700 B/s).
    assert meter.rate() == pytest.approx(100, rel=0.15)
    assert meter.eta(21_000, 22_000) == pytest.approx(1000 / meter.rate())


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_prefix_hasher_matches_sha256_whatever_the_write_order(tmp_path_factory, data) -> None:
    """Blocks land in any order; some are handed over in memory, the rest are read back."""
    import asyncio
    import hashlib
    import random

    from abi_tui.models.hashing import PrefixHasher

    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    content = rng.randbytes(rng.randint(1, 300_000))
    cuts = sorted({0, len(content), *(rng.randrange(len(content)) for _ in range(rng.randint(0, 12)))})
    blocks = list(zip(cuts, cuts[1:]))
    rng.shuffle(blocks)
    path = tmp_path_factory.mktemp("hash") / "part"
    path.write_bytes(b"")
    hasher = PrefixHasher(path, block=rng.choice([4096, 65536]), memory_limit=rng.choice([0, 50_000, 1 << 20]))
    hasher.start()
    written: list[tuple[int, int]] = []
    with open(path, "r+b") as f:
        for start, end in blocks:
            f.seek(start)
            f.write(content[start:end])
            f.flush()
            written.append((start, end))
            prefix = 0
            for s, e in sorted(written):
                if s > prefix:
                    break
                prefix = max(prefix, e)
            if rng.random() < 0.7 and start < prefix:
                hasher.offer(start, [content[start:end]], end - start)
            hasher.advance(prefix)
    assert asyncio.run(hasher.finish(len(content))) == hashlib.sha256(content).hexdigest()
