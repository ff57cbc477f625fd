"""The status line at the bottom of every screen: database path and counts."""

from __future__ import annotations

from textual.widgets import Static

__all__ = ["StatusBar"]


class StatusBar(Static):
    """Shows the app's ``status_text``; follows it as it changes."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.watch(self.app, "status_text", self._show, init=True)

    def _show(self, text: str) -> None:
        self.update(text)
