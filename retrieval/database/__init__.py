"""The database plumbing every part stands on: the engine and the schema's migrations, the tables,
what an error from the database means (an outage or a refusal), the database's clock, locks shared
by processes, and the SQLite file's own guards."""

from __future__ import annotations

from retrieval.database.citus import Distribution, DistributionRefused, distribute
from retrieval.database.clock import database_now, db_now
from retrieval.database.engine import (
    CLOSE_S,
    UPGRADE_HINT,
    check_schema,
    close_engine,
    create_engine,
    current_revision,
    downgrade,
    ensure_schema,
    upgrade,
)
from retrieval.database.errors import database_errors
from retrieval.database.locks import AdvisoryLock, Purpose, held, is_shared
from retrieval.database.sqlite_file import DatabaseFile, check_sole_process, sole_process
from retrieval.database.state import get_state, set_state
from retrieval.database.tables import UNKNOWN_PARENT

__all__ = [
    "CLOSE_S",
    "UNKNOWN_PARENT",
    "UPGRADE_HINT",
    "AdvisoryLock",
    "DatabaseFile",
    "Distribution",
    "DistributionRefused",
    "Purpose",
    "check_schema",
    "check_sole_process",
    "close_engine",
    "create_engine",
    "current_revision",
    "database_errors",
    "database_now",
    "db_now",
    "distribute",
    "downgrade",
    "ensure_schema",
    "get_state",
    "held",
    "is_shared",
    "set_state",
    "sole_process",
    "upgrade",
]
