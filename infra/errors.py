"""Errors raised in one layer and caught in another, kept where both can import them.

The offline engine (infra.program.offline) raises OfflineError; the commands and the benches
catch it without importing the engine (which loads Pulumi) just to name the class.
"""

from __future__ import annotations


class OfflineError(RuntimeError):
    """The program could not be captured; str() is one line."""
