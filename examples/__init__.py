"""Worked examples (importable, tested by CI)."""
