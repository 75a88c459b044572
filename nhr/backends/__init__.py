"""Backends: one self-contained module per model family, behind the protocols in base."""
