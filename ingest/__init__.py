"""Sources -> Arrow tables: MIDI parsing now; audio, stems, transcription and the grammar later."""
