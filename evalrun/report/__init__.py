"""Stage 4: a run directory → one self-contained HTML page."""
