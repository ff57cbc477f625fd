"""Sources -> Arrow tables: MIDI and audio parsing, the harmony, grammar, vector and pattern stages, and the ingest pipeline."""
