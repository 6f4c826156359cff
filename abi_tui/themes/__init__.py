"""Themes: the ABI dark and light themes are data (`abi.toml`), the layout is `app.tcss`."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual.theme import Theme

HERE = Path(__file__).parent
APP_CSS = HERE / "app.tcss"
THEMES_FILE = HERE / "abi.toml"
DEFAULT_THEME = "abi-dark"


def abi_themes() -> list[Theme]:
    """The themes defined in abi.toml, as Textual Theme objects."""
    from textual.theme import Theme

    data = tomllib.loads(THEMES_FILE.read_text(encoding="utf-8"))
    return [Theme(name=name, **fields) for name, fields in data.items()]
