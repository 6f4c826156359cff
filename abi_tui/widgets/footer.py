"""The key footer, rebuilt only when the keys it shows change.

Textual's Footer recomposes (every key a new widget, then a layout of the screen) on each
bindings signal, and a pane switch sends several (the tab, the focus moving, the pane's own
widgets), mostly with the same keys to show. Under load those rebuilds delayed the first frame
of the pane switched to.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    _shown: tuple[Any, ...] | None = None

    def _keys_shown(self) -> tuple[Any, ...]:
        return tuple((binding.key, binding.action, binding.description, enabled, tooltip,
                      self.app.get_key_display(binding))
                     for _, binding, enabled, tooltip in self.screen.active_bindings.values() if binding.show)

    def bindings_changed(self, screen: Screen) -> None:
        if not (self.is_attached and screen is self.screen and screen.app.app_focus):
            return super().bindings_changed(screen)
        shown = self._keys_shown()
        if shown != self._shown or not self._bindings_ready:
            self._shown = shown
            super().bindings_changed(screen)
