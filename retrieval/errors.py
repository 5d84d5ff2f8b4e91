"""Typed errors raised by retrieval/.

Each carries a short machine-readable ``reason`` (used in counters and log lines) and a message
written for an operator. The bot turns them into one polite sentence for the user.
"""

from __future__ import annotations


class ClipfindError(Exception):
    reason = "error"


class ConfigError(ClipfindError):
    reason = "config"


class ModelUnavailable(ClipfindError):
    """The configured model or its weights cannot be loaded (offline, unknown tag, bad path)."""

    reason = "model_unavailable"


class SchemaError(ClipfindError):
    """The database schema is missing, behind or ahead of this code."""

    reason = "schema"


class StoreUnavailable(ClipfindError):
    """The database cannot be reached or refused the operation.

    ``refused`` is the SQLSTATE of a statement the database understood and refused (a syntax it
    does not support, a missing table: say, a Citus limitation or a schema behind the code):
    waiting will not cure it, and an operator must not read it as an outage. None for an
    outage: no connection, a restart, a deadlock, a lock or resource limit.
    """

    reason = "store_unavailable"

    def __init__(self, message: str, *, refused: str | None = None) -> None:
        super().__init__(message)
        self.refused = refused


class ModelSwitched(ClipfindError):
    """Vectors of a model the index is no longer built with were about to be stored: they could
    never be found, and the switch's clean-up would delete them
    (retrieval/indexing/model_switch.py). Nothing was written; the images go back to the queue for a
    process with the index's model."""

    reason = "model_switched"

    def __init__(self, *, recorded: str, ours: str) -> None:
        super().__init__(f"the index is now built with the model {recorded}, not {ours}")
        self.recorded = recorded
        self.ours = ours


class FetchError(ClipfindError):
    """Downloading an image failed; ``reason`` says how (``http_404``, ``timeout`` …).
    ``lasting`` (by default, what is not ``retryable``): the link would fail the same way
    however often it was asked, not only in this process or this moment."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        retryable: bool = False,
        retry_after: float | None = None,
        lasting: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.lasting = not retryable if lasting is None else lasting
        # Seconds the server asked us to wait (HTTP 429/503 Retry-After), when it said.
        self.retry_after = retry_after


class DatabaseLost(ClipfindError):
    """The SQLite database is missing or was replaced: running on would forget what it held."""

    reason = "database_lost"


class DatabaseInUse(ClipfindError):
    """Another process runs on the SQLite database, which serves one process at a time."""

    reason = "database_in_use"


class CitusUnavailable(ClipfindError):
    """The database is not a Citus coordinator (the extension is missing or not preloaded)."""

    reason = "citus_unavailable"
