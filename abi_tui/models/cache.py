"""The model cache: layout, sidecars, listing, lookup by name, removal, verification.

    $ABI_HOME/models/<owner>/<repo>/<file>.gguf        a hub file (split shards side by side)
    $ABI_HOME/models/<owner>/<repo>/<file>.gguf.json   its sidecar: source spec, url, repo,
                                                       revision, size, sha256, verified,
                                                       downloaded_at, GGUF summary
    $ABI_HOME/models/_url/<host>/<file>.gguf           a file downloaded from a plain URL

A model is registered once its sidecar exists; the sidecar is written before the file gets its
final name, so a .gguf in the cache always has one unless someone copied it in by hand (such a
file is listed too, with a summary read on first sight and kept in `.summaries.json`).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from abi_tui.models import confine, quants, stores
from abi_tui.models.errors import InvalidRequest, ModelInUse, ModelNotFound
from abi_tui.models.gguf_info import GGUFSummary, read_summary
from abi_tui.models.record import SOURCES, CachedModel
from abi_tui.models.spec import ModelSpec, parse_spec, path_exists

URL_DIR = "_url"
SUMMARY_INDEX = ".summaries.json"
_index_lock = threading.Lock()


def sidecar_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(model_file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)


def write_sidecar(model_file: Path, data: dict[str, Any]) -> None:
    write_json_atomic(sidecar_path(model_file), data)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _safe_parts(path: str) -> list[str]:
    """Path components from the hub or a URL, none of which may climb out or smuggle bytes
    the file system treats specially."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if not parts or any(p in (".", "..") or any(ord(c) < 32 for c in p) for p in parts):
        raise InvalidRequest(f"unsafe file path {path!r}", param="model")
    return parts


def inside(root: Path, path: Path) -> Path:
    """`path`, once it is certain to stay under `root`: no `..`, and no symlink on the way (a
    directory or the file itself) that leads out of it. Raises InvalidRequest otherwise."""
    base = root.resolve()
    try:
        target = path.parent.resolve() / path.name  # follows symlinked directories that exist
    except (OSError, RuntimeError):  # a symlink loop
        target = None
    if target is None or not target.is_relative_to(base) or target == base or path.is_symlink():
        raise InvalidRequest(f"refusing to write {path}: it leads outside the model cache {base}", param="model")
    return path


def destination(models_dir: Path, *, repo: str | None, path_in_repo: str, url: str | None = None) -> Path:
    """Where a remote file lives in the cache (always inside `models_dir`)."""
    if repo:
        return inside(models_dir, models_dir.joinpath(*_safe_parts(repo), *_safe_parts(path_in_repo)))
    from urllib.parse import urlsplit

    host = (urlsplit(url or "").hostname or "").replace(":", "_")
    if host in ("", ".", ".."):
        host = "unknown"
    return inside(models_dir, models_dir.joinpath(URL_DIR, host, _safe_parts(path_in_repo)[-1]))


# -- listing ------------------------------------------------------------------------------
def _abi_models(models_dir: Path) -> list[CachedModel]:
    if not models_dir.is_dir():
        return []
    found: list[CachedModel] = []
    by_dir: dict[Path, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(models_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names = [n for n in filenames if quants.is_gguf(n) and not n.startswith(".")]
        if names:
            by_dir[Path(dirpath)] = names
    for directory, names in sorted(by_dir.items()):
        for group in quants.group_files(names):
            paths = [directory / n for n in group.files]
            first = paths[0]
            rel = first.relative_to(models_dir).parts
            side = read_sidecar(first) or {}
            repo = side.get("repo") or (f"{rel[0]}/{rel[1]}" if len(rel) >= 3 and rel[0] != URL_DIR else None)
            files_meta = side.get("files") or []
            sha = [m.get("sha256") for m in files_meta] if files_meta else ([side.get("sha256")] if side else [])
            aliases = []
            if repo and len(rel) >= 3:
                aliases.append(f"{repo}/{'/'.join(rel[2:])}")
            if side.get("url"):
                aliases.append(side["url"])
            found.append(CachedModel(
                name=side.get("name") or quants.model_stem(group.first), path=first, source="abi", files=paths,
                size=sum(_size(p) for p in paths), repo=repo,
                quant=side.get("quant") or group.quant, spec=side.get("source"), url=side.get("url"),
                revision=side.get("revision"), sha256=sha, verified=bool(side.get("verified")),
                downloaded_at=side.get("downloaded_at"), summary=GGUFSummary.from_dict(side.get("gguf")),
                aliases=aliases,
            ))
    return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fill_summaries(models: list[CachedModel], models_dir: Path) -> None:
    """Read the GGUF summary of models that have none, remembering it by (path, size, mtime)."""
    missing = [m for m in models if m.summary is None]
    if not missing:
        return
    index_path = models_dir / SUMMARY_INDEX
    with _index_lock:
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError):
            index = {}
        changed = False
        for model in missing:
            try:
                stat = model.path.stat()
            except OSError:
                continue
            key = str(model.path)
            stamp = [stat.st_size, stat.st_mtime_ns, len(model.files)]
            entry = index.get(key)
            if entry and entry.get("stamp") == stamp:
                model.summary = GGUFSummary.from_dict(entry.get("summary"))
                continue
            try:
                model.summary = read_summary(model.files or [model.path])
            except Exception:  # a broken file is listed without a summary, not fatal to `list`
                model.summary = None
            index[key] = {"stamp": stamp, "summary": model.summary.to_dict() if model.summary else None}
            changed = True
        if changed:
            with contextlib.suppress(OSError):
                models_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(index_path, index)
    for model in models:
        if model.quant is None and model.summary is not None:
            model.quant = model.summary.quantization


def list_models(settings: Any, *, include_stores: bool = True, summaries: bool = True,
                loaded: Iterable[str] | None = None) -> list[CachedModel]:
    """Every model abi can load: its own cache first, then other tools' stores.
    `loaded` names the server's loaded model(s) to mark them."""
    models = _abi_models(settings.models_dir)
    if include_stores:
        models += stores.discover_stores()
    _unique_ids(models)
    if summaries:
        _fill_summaries(models, settings.models_dir)
    if loaded:
        marks = {x.lower() for x in loaded if x}
        for model in models:
            model.loaded = bool(marks & model.keys())
    return models


def _unique_ids(models: list[CachedModel]) -> None:
    """Two files with one name (the same quant from two repos): name them by repo and file."""
    counts: dict[str, int] = {}
    for model in models:
        counts[model.id.lower()] = counts.get(model.id.lower(), 0) + 1
    for model in models:
        if counts[model.id.lower()] > 1:
            prefix = "" if model.source == "abi" else f"{model.source}:"
            model.id = f"{prefix}{model.repo}/{model.path.name}" if model.repo else str(model.path)


def model_name_for_path(path: Path, settings: Any) -> str:
    """The cached model's name for a GGUF path (what /health and /v1/models show), or the
    file's stem for a file outside every store."""
    try:
        target = Path(path).resolve()
    except OSError:
        return Path(path).stem
    for model in list_models(settings, summaries=False):
        with contextlib.suppress(OSError):
            if model.path.resolve() == target or any(f.resolve() == target for f in model.files):
                return model.id
    return quants.model_stem(Path(path).name)


# -- lookup -------------------------------------------------------------------------------
def _source_rank(model: CachedModel) -> int:
    return SOURCES.index(model.source) if model.source in SOURCES else len(SOURCES)


def _lookup_keys(text: str, probe: bool = True) -> set[str]:
    keys = {text.lower()}
    with contextlib.suppress(InvalidRequest):
        spec = parse_spec(text, probe=probe)
        if spec.kind == "hub":
            keys.add(ModelSpec("hub", text, repo=spec.repo, filename=spec.filename, quant=spec.quant).canonical.lower())
            if spec.filename:
                keys.add(f"{spec.repo}/{spec.filename.rsplit('/', 1)[-1]}".lower())
        elif spec.kind == "path" and spec.path is not None:
            keys.add(str(spec.path).lower())
    return keys


def find_model(settings: Any, text: str, models: list[CachedModel] | None = None, *,
               probe: bool = True) -> CachedModel:
    """The cached model `text` names (name, file name, source:name, owner/repo:QUANT,
    owner/repo/file.gguf, hf://..., its URL or path). Several stores holding one name: abi's
    own cache wins; otherwise the error lists the qualified names to choose from."""
    models = list_models(settings, summaries=False) if models is None else models
    keys = _lookup_keys(text, probe)
    found = [m for m in models if keys & m.keys()]
    if not found:
        spec = _try_parse(text, probe)
        if spec is not None and spec.kind == "hub" and not spec.filename and not spec.quant:
            in_repo = [m for m in models if m.repo and m.repo.lower() == spec.repo.lower()]
            found = _pick_default(in_repo)
    if not found:
        names = sorted({m.id for m in models})
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ("; `abi model list` shows the cache" if names else "")
        raise ModelNotFound(f"model {text!r} is not in the cache{hint}")
    if len(found) == 1:
        return found[0]
    if len({m.path.resolve() for m in found}) == 1:
        return found[0]
    best = min(_source_rank(m) for m in found)
    top = [m for m in found if _source_rank(m) == best]
    if len(top) == 1:
        return top[0]
    choices = ", ".join(sorted(m.id if m.id.lower() != text.lower() else m.qualified_name for m in top))
    raise ModelNotFound(f"{text!r} names several cached models: {choices}")


def _pick_default(models: list[CachedModel]) -> list[CachedModel]:
    if len(models) <= 1:
        return models
    groups = [quants.FileGroup(str(m.path), m.quant, [str(m.path)]) for m in models]
    picked = quants.default_group(groups)
    return [m for m in models if str(m.path) == picked.key] if picked else models


def _try_parse(text: str, probe: bool = True) -> ModelSpec | None:
    try:
        return parse_spec(text, probe=probe)
    except InvalidRequest:
        return None


def resolve_local_model(spec: str, settings: Any) -> Path:
    """The GGUF to load for any spec form, once it is on disk: a path, a cached name,
    owner/repo:QUANT, owner/repo/file.gguf, hf://..., a URL, or `demo`. Never touches the
    network; raises ModelNotFound saying how to get the model otherwise."""
    parsed = parse_spec(spec)
    if parsed.kind == "path":
        assert parsed.path is not None
        if path_exists(parsed.path, file=True):
            return parsed.path
        raise ModelNotFound(f"no such model file: {parsed.path}")
    try:
        return find_model(settings, spec).path
    except ModelNotFound as exc:
        if spec.strip().lower() == "demo":
            return stores.assemble_demo_model()
        if "several" in exc.message:
            raise
        if parsed.kind in ("hub", "url"):
            raise ModelNotFound(f"{spec} is not downloaded yet; run `abi model download {spec}`") from None
        raise


CLIENT_NOT_FOUND = ("not found: name a model that GET /v1/models lists, or a .gguf file under the "
                    "server's model folders (server.model_dirs)")


def resolve_client_model(spec: str, settings: Any) -> Path:
    """`resolve_local_model` for a spec an API client sent: only models in the cache, the known
    stores and the demo package, and files under `server.model_dirs`. A path anywhere else gets
    the same 404 as a missing file, and nothing here asks the file system about a path outside
    those folders, so no answer says whether a file exists."""
    text = (spec or "").strip()
    parsed = parse_spec(text, probe=False)
    if parsed.kind == "path":
        assert parsed.path is not None
        with contextlib.suppress(ModelNotFound):
            return find_model(settings, text, probe=False).path  # a listed model's own path
        found = confine.file_inside(parsed.path, settings.client_model_dirs)
        if found is None:
            raise ModelNotFound(f"model {text!r} {CLIENT_NOT_FOUND}")
        return found
    try:
        return find_model(settings, text, probe=False).path
    except ModelNotFound as exc:
        if text.lower() == "demo":
            return stores.assemble_demo_model()
        if "several" in exc.message:
            raise
        if parsed.kind != "url":  # `owner/file.gguf` relative to the working directory, if allowed
            found = confine.file_inside(Path(text), settings.client_model_dirs)
            if found is not None:
                return found
        if parsed.kind in ("hub", "url"):
            raise ModelNotFound(f"{text} is not downloaded yet; run `abi model download {text}`") from None
        raise


# -- loaded model (the local server) ------------------------------------------------------
def server_loaded_models(settings: Any, timeout_s: float = 0.5) -> set[str]:
    """What the local server says it has loaded (GET /health), empty when none answers."""
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    request = urllib.request.Request(f"http://{host}:{settings.server.port}/health")
    if settings.server.token:
        request.add_header("Authorization", f"Bearer {settings.server.token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:  # 503 while loading still names the model
        try:
            data = json.loads(exc.read() or b"{}")
        except ValueError:
            return set()
    except (OSError, ValueError):
        return set()
    return _model_names(data.get("model") if isinstance(data, dict) else None)


def _model_names(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {str(v) for k, v in value.items() if k in ("name", "id", "path", "spec") and v}
    if isinstance(value, list):
        return set().union(*(_model_names(v) for v in value)) if value else set()
    return set()


def is_loaded(model: CachedModel, loaded: Iterable[str]) -> bool:
    keys = model.keys()
    for name in loaded:
        if name.lower() in keys:
            return True
        with contextlib.suppress(OSError):
            if Path(name).exists() and Path(name).resolve() == model.path.resolve():
                return True
    return False


# -- remove -------------------------------------------------------------------------------
def remove_model(settings: Any, name: str, *, loaded: Iterable[str] | None = None) -> CachedModel:
    """Delete a model abi downloaded (its files, sidecar and leftovers). Refuses a model the
    server has loaded (`loaded`: its names; None asks the local server) or one still being
    downloaded, and other tools' files."""
    from abi_tui.models.filelock import FileLock

    model = find_model(settings, name)
    if model.source != "abi":
        raise InvalidRequest(f"{model.qualified_name} belongs to {model.source} ({model.path}); "
                             "abi lists it but leaves deleting it to that tool", param="name")
    loaded_names = server_loaded_models(settings) if loaded is None else set(loaded)
    if is_loaded(model, loaded_names):
        raise ModelInUse(f"{model.id} is loaded by the server at {settings.server.host}:{settings.server.port}; "
                         "switch the server to another model (POST /admin/reload) or stop it first")
    locks = [FileLock(f.with_name(f.name + ".lock")) for f in model.files]
    try:
        for lock in locks:
            if not lock.try_acquire():
                raise ModelInUse(f"{model.id} is being downloaded; cancel that download first")
        for path in model.files:
            for leftover in (path, sidecar_path(path), path.with_name(path.name + ".part"),
                             path.with_name(path.name + ".part.json")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
    finally:
        for lock in locks:
            lock.release()
    _prune_empty_dirs(model.path.parent, settings.models_dir)
    return model


def _prune_empty_dirs(directory: Path, root: Path) -> None:
    root = root.resolve()
    current = directory.resolve()
    while current != root and root in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


# -- verify -------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    model: CachedModel
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f["ok"] for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.model.id, "source": self.model.source, "ok": self.ok, "files": self.files}


def verify_model(settings: Any, name: str, progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Re-hash a model's files against the sha256 its sidecar (or store) recorded."""
    from abi_tui.models.hashing import sha256_file

    model = find_model(settings, name)
    expected = list(model.sha256) + [None] * (len(model.files) - len(model.sha256))
    if not any(expected):
        raise InvalidRequest(f"no sha256 is recorded for {model.qualified_name}; nothing to verify against", param="name")
    total = sum(_size(p) for p in model.files)
    result = VerifyResult(model)
    base = 0
    for path, want in zip(model.files, expected, strict=True):
        actual = sha256_file(path, (lambda n, offset=base: progress(offset + n, total)) if progress else None)
        base += _size(path)
        result.files.append({"path": str(path), "expected": want, "actual": actual,
                             "ok": want is None or actual == want.lower()})
    if model.source == "abi":
        side = read_sidecar(model.path)
        if side is not None:
            side["verified"] = result.ok
            side["verified_at"] = now_iso()
            write_sidecar(model.path, side)
    return result
