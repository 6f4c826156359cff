"""Model specs: every way a user names a model.

    owner/repo:QUANT            a quant of a hub repo (split files fetched together)
    owner/repo                  the repo's only GGUF, or its Q4_K_M
    owner/repo/dir/file.gguf    one file of a hub repo (`owner/repo@rev...` pins a revision)
    hf://owner/repo/...         the same, explicit
    https://host/...            a URL (the hub's own /resolve/ URLs count as hub files)
    ./model.gguf, /abs/path     a local file
    gemma-3-270m-it-Q4_K_M      the name of a cached model
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from abi_tui.models.errors import InvalidRequest

SpecKind = Literal["hub", "url", "path", "name"]

_PART = r"[A-Za-z0-9][\w.\-]*"
REPO_RE = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[\w.\-]+))?(?::(?P<quant>[\w.\-]+))?$")
FILE_RE = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<rev>[\w.\-]+))?/(?P<file>[^:?#]+\.gguf)$", re.IGNORECASE)
RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass(frozen=True)
class ModelSpec:
    kind: SpecKind
    text: str
    repo: str | None = None
    revision: str | None = None
    filename: str | None = None
    quant: str | None = None
    url: str | None = None
    path: Path | None = None

    def with_quant(self, quant: str | None) -> ModelSpec:
        if quant is None:
            return self
        if self.kind != "hub" or self.filename:
            raise InvalidRequest(f"--quant applies to an owner/repo spec, not {self.text!r}", param="quant")
        return ModelSpec("hub", f"{self.repo}:{quant}", repo=self.repo, revision=self.revision, quant=quant)

    @property
    def canonical(self) -> str:
        if self.kind == "hub":
            rev = f"@{self.revision}" if self.revision else ""
            return f"{self.repo}{rev}/{self.filename}" if self.filename else f"{self.repo}{rev}" + (f":{self.quant}" if self.quant else "")
        return self.url or (str(self.path) if self.path else self.text)


def path_exists(path: Path, *, file: bool = False) -> bool:
    """`path.exists()` / `is_file()` for names a client sent: a name too long for the file system
    or with a NUL byte is simply not there (pathlib raises for those)."""
    try:
        return path.is_file() if file else path.exists()
    except (OSError, ValueError):
        return False


def _expand(text: str) -> Path:
    """`~` expanded; `~someone` for a user this system lacks stays as written (pathlib raises)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or (len(text) > 2 and text[1] == ":")


def parse_spec(text: str, *, endpoint: str | None = None, probe: bool = True) -> ModelSpec:
    """Classify a spec without touching the network. `endpoint` is the hub's base URL, used to
    recognise its /resolve/ URLs (default: HF_ENDPOINT or huggingface_hub's default).
    `probe=False` classifies by the text alone: a spec from an API client must not be classified
    by whether a file of that name exists (that would answer the question for the client)."""
    text = (text or "").strip()
    if not text:
        raise InvalidRequest("empty model spec", param="model")
    if text.startswith("hf://"):
        rest = text[len("hf://"):].strip("/")
        spec = _hub_spec(rest, text)
        if spec is None:
            raise InvalidRequest(f"bad hub spec {text!r}: expected hf://owner/repo[:QUANT] or hf://owner/repo/file.gguf", param="model")
        return spec
    if re.match(r"^https?://", text, re.IGNORECASE):
        return _url_spec(text, endpoint)
    if _looks_like_path(text) or (probe and path_exists(Path(text))):
        return ModelSpec("path", text, path=_expand(text))
    spec = _hub_spec(text, text)
    if spec is not None:
        return spec
    if text.lower().endswith(".gguf") and ("/" in text or "\\" in text):
        return ModelSpec("path", text, path=_expand(text))
    return ModelSpec("name", text)


def _hub_spec(rest: str, text: str) -> ModelSpec | None:
    match = FILE_RE.match(rest)
    if match:
        if any(part in (".", "..") for part in match["file"].replace("\\", "/").split("/")):
            raise InvalidRequest(f"bad hub spec {text!r}: a file path in a repo cannot contain '.' or '..'",
                                 param="model")
        return ModelSpec("hub", text, repo=match["repo"], revision=match["rev"], filename=match["file"])
    match = REPO_RE.match(rest)
    if match:
        return ModelSpec("hub", text, repo=match["repo"], revision=match["rev"], quant=match["quant"])
    return None


def hub_endpoint() -> str:
    """The hub's base URL (HF_ENDPOINT, read per call; huggingface_hub reads it once at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _url_spec(text: str, endpoint: str | None) -> ModelSpec:
    parts = urlsplit(text)
    if not parts.netloc:
        raise InvalidRequest(f"bad URL {text!r}", param="model")
    if endpoint is None:
        endpoint = hub_endpoint()
    hub = urlsplit(endpoint)
    base_path = hub.path.rstrip("/")
    if parts.netloc.lower() == hub.netloc.lower() and parts.path.startswith(base_path + "/"):
        match = RESOLVE_RE.match(parts.path[len(base_path):])
        if match:
            return ModelSpec("hub", text, repo=unquote(match["repo"]), revision=unquote(match["rev"]),
                             filename=unquote(match["file"]))
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if not name:
        raise InvalidRequest(f"URL {text!r} does not name a file", param="model")
    return ModelSpec("url", text, url=text, filename=name)
