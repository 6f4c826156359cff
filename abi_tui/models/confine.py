"""Which model files an API client may name by path (docs/SECURITY.md).

A client may load a GGUF by path only from the folders in `server.model_dirs` ($ABI_HOME/models
by default). The check is lexical first (`..` folded, nothing on disk touched for a path that is
plainly outside), then on the real path, so a symlink inside a folder cannot lead out of it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _roots(dirs: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(as written, symlinks resolved) for each folder."""
    roots = []
    for folder in dirs:
        try:
            roots.append((Path(os.path.abspath(folder)), Path(folder).resolve()))
        except (OSError, ValueError, RuntimeError):
            continue
    return roots


def _under(path: Path, root: Path) -> bool:
    return path != root and path.is_relative_to(root)


def file_inside(path: Path, dirs: Iterable[Path]) -> Path | None:
    """The file `path` names when it is a regular file under one of `dirs`, else None. The same
    None for a file that is missing and one that is outside: the caller's answer must not
    tell them apart."""
    try:
        absolute = Path(os.path.abspath(path))
    except (OSError, ValueError):
        return None
    roots = _roots(dirs)
    if not any(_under(absolute, written) or _under(absolute, real) for written, real in roots):
        return None
    try:
        real_path = absolute.resolve(strict=True)
        if not real_path.is_file():
            return None
    except (OSError, ValueError, RuntimeError):
        return None
    if not any(_under(real_path, real) for _, real in roots):
        return None  # a symlink leading out of the folder
    return absolute
