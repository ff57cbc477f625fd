"""The help screen: what each screen is for and every key binding, read from the
screens' own BINDINGS so it cannot drift from them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

__all__ = ["HelpScreen", "help_markdown"]


def _keys(binding) -> str:
    if isinstance(binding, tuple):
        keys = binding[0]
        desc = binding[2] if len(binding) > 2 else binding[1]
    else:
        keys, desc = binding.key, binding.description or binding.action
    return ", ".join(f"`{k}`" for k in keys.split(",")), desc


def help_markdown(app) -> str:
    from tui.app import _load

    lines = ["# Harmony Atlas — help", "",
             f"Database: `{app.db_dir}`. Every query runs in the background; the screen stays live.", "",
             "## Everywhere", "", "| keys | what |", "|---|---|"]
    for name, _, key in app.mode_table:
        lines.append(f"| `{key}`, `f{int(key) + 1}` | {name} screen |")
    lines += ["| `?`, `f1` | this help |", "| `ctrl+r` | refresh the status bar counts |",
              "| `ctrl+p` | command palette |", "| `ctrl+q` | quit |", ""]
    for name, screen, _ in app.mode_table:
        cls = _load(screen)
        lines += [f"## {name.capitalize()}", "", cls.HELP, ""]
        if cls.BINDINGS:
            lines += ["| keys | what |", "|---|---|"]
            for b in cls.BINDINGS:
                k, d = _keys(b)
                lines.append(f"| {k} | {d} |")
            lines.append("")
    lines.append("Press `escape` to close.")
    return "\n".join(lines)


class HelpScreen(ModalScreen):
    CSS_PATH = "help.tcss"
    BINDINGS = [("escape,q,question_mark,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(help_markdown(self.app), id="help-text")
