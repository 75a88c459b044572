"""Evaluation: judges against truth (and, later, people), datasets against each other."""
