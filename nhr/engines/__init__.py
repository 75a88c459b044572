"""Engines: what executes a chain of stages (in this process, or on a Ray cluster).

The runner owns the ledger, resume, stats and progress; an engine only computes. See
``nhr.engines.base`` for the contract between them.
"""
