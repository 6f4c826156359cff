"""Quantization labels and split files in GGUF file names.

`Qwen2.5-7B-Instruct-Q4_K_M-00001-of-00002.gguf` is shard 1 of 2 of the `Q4_K_M` quant. The
quant a user names (`owner/repo:q4_k_m`) is matched case-insensitively against these labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# A quant label sits between separators: Q4_K_M, IQ4_XS, Q8_0, UD-Q4_K_XL, BF16, F16, MXFP4_MOE.
QUANT_RE = re.compile(
    r"(?:^|(?<=[-._/]))((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|FP?16|FP?32|MXFP4(?:_MOE)?))(?=$|[-._/])",
    re.IGNORECASE,
)
DEFAULT_QUANTS = ("Q4_K_M", "Q4_K_S", "Q4_0", "Q5_K_M", "Q8_0")


def is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def is_projector(name: str) -> bool:
    """Vision projectors (mmproj) ship next to the weights but are not models on their own."""
    return name.rsplit("/", 1)[-1].lower().startswith("mmproj")


def split_info(name: str) -> tuple[int, int] | None:
    """(index, count) for `-0000i-of-0000n.gguf` shards, else None."""
    match = SPLIT_RE.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def group_key(name: str) -> str:
    """The name shared by all shards of one split model (the file name itself when not split)."""
    return SPLIT_RE.sub(".gguf", name)


def quant_label(name: str) -> str | None:
    """The quant named in a GGUF path (upper case), the last one when several appear."""
    stem = group_key(name)[: -len(".gguf")] if is_gguf(name) else name
    found = QUANT_RE.findall(stem)
    return found[-1].upper() if found else None


def model_stem(name: str) -> str:
    """File name without directory, split suffix or extension: the model's short name."""
    base = group_key(name).rsplit("/", 1)[-1]
    return base[: -len(".gguf")] if is_gguf(base) else base


@dataclass
class FileGroup:
    """One runnable model in a repo: a single GGUF or all shards of a split one."""

    key: str
    quant: str | None
    files: list[str] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.files[0]


def group_files(paths: Iterable[str]) -> list[FileGroup]:
    groups: dict[str, FileGroup] = {}
    for path in paths:
        if not is_gguf(path) or is_projector(path):
            continue
        key = group_key(path)
        groups.setdefault(key, FileGroup(key, quant_label(path))).files.append(path)
    for group in groups.values():
        group.files.sort(key=lambda p: (split_info(p) or (0, 0))[0])
    return sorted(groups.values(), key=lambda g: g.key)


def _boundary_match(quant: str, key: str) -> bool:
    return re.search(rf"(?:^|[-._/]){re.escape(quant)}(?=$|[-._/])", key, re.IGNORECASE) is not None


def match_quant(groups: list[FileGroup], quant: str) -> list[FileGroup]:
    """Groups whose label is `quant` (case-insensitive); failing that, whose name contains it
    between separators (`UD-Q4_K_XL` also answers to `Q4_K_XL`)."""
    wanted = quant.upper()
    exact = [g for g in groups if g.quant == wanted]
    if exact:
        return exact
    return [g for g in groups if _boundary_match(wanted, g.key)]


def default_group(groups: list[FileGroup]) -> FileGroup | None:
    """The quant picked when none is named: the only one, or a common 4-bit one."""
    if len(groups) == 1:
        return groups[0]
    for quant in DEFAULT_QUANTS:
        found = match_quant(groups, quant)
        if len(found) == 1:
            return found[0]
    return None


def describe_groups(groups: list[FileGroup], sizes: dict[str, int] | None = None) -> str:
    """`Q4_K_M (4.1 GB), Q8_0 (7.7 GB, 2 files)` for error messages."""
    from abi_tui.models.units import human_bytes

    parts = []
    for group in groups:
        label = group.quant or group.key.rsplit("/", 1)[-1]
        extra = []
        if sizes is not None:
            extra.append(human_bytes(sum(sizes.get(f, 0) for f in group.files)))
        if len(group.files) > 1:
            extra.append(f"{len(group.files)} files")
        parts.append(f"{label} ({', '.join(extra)})" if extra else label)
    return ", ".join(parts)
