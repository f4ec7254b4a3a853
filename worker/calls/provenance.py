"""Where a record came from: its ``source`` and whether its ``legs`` were fetched.

Kept apart from :mod:`worker.calls.enrich` so the web process, which books
work through :mod:`worker.calls.intake`, does not load the enrichment code.
"""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    """How a call reached exolegs: the record's ``source``."""

    CALLBACK = "callback"
    RECONCILE = "reconcile"
    BACKFILL = "backfill"


class Legs(StrEnum):
    """Whether the record's legs came from the legs API: the record's ``legs``."""

    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
