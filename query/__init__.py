"""Similarity, covers, pattern and progression lookup, SQL helpers: the Python API."""
