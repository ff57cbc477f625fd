"""Builds and updates the vector and pattern indexes from the DuckDB tables."""
