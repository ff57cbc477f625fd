"""Widgets of the Harmony Atlas TUI."""
