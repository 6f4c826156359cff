"""Model-cache errors a user can cause or act on (one line on the CLI, an error object on the API)."""

from __future__ import annotations

from abi_tui.errors import AbiError, InvalidRequest, ModelNotFound

__all__ = [
    "AbiError",
    "ChecksumMismatch",
    "DownloadCancelled",
    "DownloadFailed",
    "HubError",
    "InsufficientSpace",
    "InvalidRequest",
    "ModelInUse",
    "ModelNotFound",
    "OfflineMode",
]


class DownloadFailed(AbiError):
    status = 502
    type = "server_error"
    code = "download_failed"


class ChecksumMismatch(DownloadFailed):
    code = "checksum_mismatch"


class InsufficientSpace(AbiError):
    status = 507
    type = "server_error"
    code = "insufficient_storage"


class DownloadCancelled(AbiError):
    status = 499
    code = "download_cancelled"


class HubError(AbiError):
    status = 502
    type = "server_error"
    code = "hub_error"


class OfflineMode(AbiError):
    status = 503
    type = "server_error"
    code = "offline"


class ModelInUse(AbiError):
    status = 409
    code = "model_in_use"
