"""The model cache: specs, hub access, downloads, the cache and other tools' stores.

The names below are the package's public API (imported lazily, so `abi --help` stays fast):

    resolve_local_model(spec, settings) -> Path         the GGUF for any spec, once on disk
    resolve_client_model(spec, settings) -> Path        the same, confined for API clients
    model_name_for_path(path, settings) -> str          the cached model's name for a GGUF path
    list_models(settings, loaded=...) -> [CachedModel]  abi's cache and other tools' stores
    find_model(settings, name) -> CachedModel
    remove_model(settings, name, loaded=...) -> CachedModel
    verify_model(settings, name) -> VerifyResult
    start_download(settings, spec, ...) -> DownloadHandle   (on a running event loop)
    pull_model(settings, spec, on_progress=...) -> CachedModel
    search_gguf(query, limit=, sort=) -> [SearchResult]
    async wrappers for the server: api_list_models, api_pull_events, api_remove_model, api_search
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "resolve_local_model": "abi_tui.models.cache",
    "resolve_client_model": "abi_tui.models.cache",
    "list_models": "abi_tui.models.cache",
    "find_model": "abi_tui.models.cache",
    "remove_model": "abi_tui.models.cache",
    "verify_model": "abi_tui.models.cache",
    "server_loaded_models": "abi_tui.models.cache",
    "model_name_for_path": "abi_tui.models.cache",
    "CachedModel": "abi_tui.models.record",
    "start_download": "abi_tui.models.pull",
    "pull_model": "abi_tui.models.pull",
    "active_downloads": "abi_tui.models.pull",
    "find_download": "abi_tui.models.pull",
    "progress_listeners": "abi_tui.models.pull",
    "DownloadHandle": "abi_tui.models.pull",
    "DownloadOptions": "abi_tui.models.download",
    "DownloadProgress": "abi_tui.models.progress",
    "DownloadState": "abi_tui.models.progress",
    "search_gguf": "abi_tui.models.hub",
    "parse_spec": "abi_tui.models.spec",
    "read_summary": "abi_tui.models.gguf_info",
    "estimate_memory": "abi_tui.models.gguf_info",
    "assemble_demo_model": "abi_tui.models.stores",
    "api_list_models": "abi_tui.models.service",
    "api_pull_events": "abi_tui.models.service",
    "api_remove_model": "abi_tui.models.service",
    "api_search": "abi_tui.models.service",
    "api_model_info": "abi_tui.models.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'abi_tui.models' has no attribute {name!r}")
    return getattr(import_module(module), name)
