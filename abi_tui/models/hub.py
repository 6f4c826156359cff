"""Hub access through huggingface_hub: repo files with LFS sha256 and sizes, GGUF search.

HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are read when a call is made (huggingface_hub reads
some of them once at import), so a test or a long-running server sees the current values.
Everything here blocks: async callers go through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from abi_tui.models import quants
from abi_tui.models.errors import HubError, InvalidRequest, ModelNotFound, OfflineMode
from abi_tui.models.spec import ModelSpec, hub_endpoint

SearchSort = Literal["downloads", "likes", "updated"]
T = TypeVar("T")


@dataclass
class RemoteFile:
    path: str
    url: str
    size: int | None = None
    sha256: str | None = None


@dataclass
class ResolvedModel:
    """What a spec points at on the network: the files to fetch and how to check them."""

    spec: str
    name: str
    files: list[RemoteFile]
    repo: str | None = None
    revision: str | None = None
    quant: str | None = None

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass
class QuantOption:
    quant: str
    size: int
    files: int
    spec: str


@dataclass
class SearchResult:
    repo: str
    downloads: int | None = None
    likes: int | None = None
    updated: str | None = None
    quants: list[QuantOption] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def check_online(what: str) -> None:
    from huggingface_hub import constants

    offline = is_offline()
    # huggingface_hub read HF_HUB_OFFLINE once, at import; keep it in step with the environment
    # of this call (a server or a test process outlives one setting of it).
    constants.HF_HUB_OFFLINE = offline
    if offline:
        raise OfflineMode(f"cannot {what}: HF_HUB_OFFLINE is set; only cached models are available")


def hub_headers(token: str | None = None) -> dict[str, str]:
    """User-agent and, when a token is known (HF_TOKEN or `hf auth login`), Authorization."""
    from huggingface_hub.utils import build_hf_headers

    return build_hf_headers(token=token or os.environ.get("HF_TOKEN") or None, library_name="abi-tui")


def hub_api(endpoint: str | None = None, token: str | None = None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or hub_endpoint(), token=token or os.environ.get("HF_TOKEN") or None,
                 library_name="abi-tui")


def _call(what: str, fn: Callable[[], T], endpoint: str) -> T:
    """Turn huggingface_hub and transport errors into one-line messages a user can act on."""
    from huggingface_hub import errors as hf_errors

    try:
        return fn()
    except hf_errors.GatedRepoError:
        raise HubError(f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN", status=403) from None
    except hf_errors.RepositoryNotFoundError:
        raise ModelNotFound(f"{what}: repository not found on {endpoint} (private repos need HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise ModelNotFound(f"{what}: revision not found") from None
    except hf_errors.OfflineModeIsEnabled:
        raise OfflineMode(f"cannot {what}: HF_HUB_OFFLINE is set; only cached models are available") from None
    except hf_errors.HFValidationError as exc:
        raise InvalidRequest(f"{what}: {str(exc).splitlines()[0]}", param="model") from None
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise HubError(f"{what}: the hub answered {status}: {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HubError(f"{what}: cannot reach the hub at {endpoint}: {reason}") from None
    except Exception as exc:  # httpx2 transport errors do not derive from OSError
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise HubError(f"{what}: cannot reach the hub at {endpoint}: {exc or type(exc).__name__}") from None
        raise


def file_url(repo: str, path: str, revision: str, endpoint: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, path, revision=revision, endpoint=endpoint)


def repo_files(repo: str, revision: str | None = None, *, endpoint: str | None = None,
               token: str | None = None) -> tuple[str, list[RemoteFile]]:
    """(commit sha, every GGUF file with size and LFS sha256) of a hub repo."""
    endpoint = endpoint or hub_endpoint()
    check_online(f"list {repo}")
    api = hub_api(endpoint, token)
    info = _call(f"list {repo}", lambda: api.model_info(repo, revision=revision, files_metadata=True), endpoint)
    commit = info.sha or revision or "main"
    files = [
        RemoteFile(
            path=s.rfilename,
            url=file_url(repo, s.rfilename, commit, endpoint),
            size=s.lfs.size if s.lfs else s.size,
            sha256=s.lfs.sha256 if s.lfs else None,
        )
        for s in info.siblings or []
        if quants.is_gguf(s.rfilename)
    ]
    return commit, files


def resolve_remote(spec: ModelSpec, *, endpoint: str | None = None, token: str | None = None) -> ResolvedModel:
    """The files a hub or URL spec stands for. Raises ModelNotFound listing the available
    quants when the quant is unknown or ambiguous."""
    if spec.kind == "url":
        assert spec.url and spec.filename
        return ResolvedModel(spec=spec.text, name=quants.model_stem(spec.filename),
                             files=[RemoteFile(path=spec.filename, url=spec.url)])
    if spec.kind != "hub" or not spec.repo:
        raise InvalidRequest(f"{spec.text!r} is not a hub spec or URL", param="model")
    endpoint = endpoint or hub_endpoint()
    commit, files = repo_files(spec.repo, spec.revision, endpoint=endpoint, token=token)
    by_path = {f.path: f for f in files}
    sizes = {f.path: f.size or 0 for f in files}
    groups = quants.group_files(by_path)
    available = quants.describe_groups(groups, sizes) or "none"
    if not files:
        raise ModelNotFound(f"{spec.repo} has no GGUF files")
    if spec.filename:
        wanted = next((p for p in by_path if p.lower() == spec.filename.lower()), None)
        if wanted is None:
            raise ModelNotFound(f"{spec.repo} has no file {spec.filename}; GGUF quants available: {available}")
        group = next((g for g in groups if wanted in g.files), quants.FileGroup(wanted, quants.quant_label(wanted), [wanted]))
    elif spec.quant:
        found = quants.match_quant(groups, spec.quant)
        if len(found) != 1:
            problem = "is ambiguous" if found else "is not available"
            choices = quants.describe_groups(found, sizes) if found else available
            raise ModelNotFound(f"quant {spec.quant} {problem} in {spec.repo}; available: {choices}")
        group = found[0]
    else:
        picked = quants.default_group(groups)
        if picked is None:
            raise ModelNotFound(f"{spec.repo} has several quants, name one as {spec.repo}:QUANT; available: {available}")
        group = picked
    count = len(group.files)
    for path in group.files:
        split = quants.split_info(path)
        if split and split[1] != count:
            raise ModelNotFound(f"{spec.repo}: {group.key} is split into {split[1]} files but only {count} are in the repo")
    chosen = [by_path[p] for p in group.files]
    return ResolvedModel(spec=spec.canonical, name=quants.model_stem(group.first), files=chosen,
                         repo=spec.repo, revision=commit, quant=group.quant)


_SORT_KEYS = {"downloads": "downloads", "likes": "likes", "updated": "last_modified"}


def search_gguf(query: str, *, limit: int = 10, sort: SearchSort = "downloads",
                endpoint: str | None = None, token: str | None = None) -> list[SearchResult]:
    """GGUF repos matching `query`, each with its quants and their sizes."""
    endpoint = endpoint or hub_endpoint()
    check_online("search the hub")
    if sort not in _SORT_KEYS:
        raise InvalidRequest(f"sort must be one of {', '.join(_SORT_KEYS)}", param="sort")
    api = hub_api(endpoint, token)
    found = _call("search the hub", lambda: list(api.list_models(
        search=query or None, filter="gguf", sort=_SORT_KEYS[sort], limit=limit,
        expand=["downloads", "likes", "lastModified"])), endpoint)
    results = [SearchResult(m.id, m.downloads, m.likes, m.last_modified.isoformat() if m.last_modified else None)
               for m in found]

    def fill(result: SearchResult) -> None:
        try:
            _, files = repo_files(result.repo, endpoint=endpoint, token=token)
        except (HubError, ModelNotFound):
            return  # a repo that vanished or is gated still shows, without quants
        sizes = {f.path: f.size or 0 for f in files}
        for group in quants.group_files(sizes):
            label = group.quant or quants.model_stem(group.first)
            spec = f"{result.repo}:{group.quant}" if group.quant else f"{result.repo}/{group.first}"
            result.quants.append(QuantOption(label, sum(sizes[f] for f in group.files), len(group.files), spec))

    if results:
        with ThreadPoolExecutor(max_workers=min(8, len(results))) as pool:
            list(pool.map(fill, results))
    return results
