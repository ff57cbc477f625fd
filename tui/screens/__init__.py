"""Screens of the Harmony Atlas TUI, one module (and one .tcss) each."""
