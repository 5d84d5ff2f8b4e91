"""What an error from the database means: an outage (the database is away or busy: wait, and keep
the work) or a refusal (it refused the statement: waiting will not cure it). Every statement runs
inside ``database_errors()``, which turns either into `StoreUnavailable`."""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Iterator

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from retrieval.errors import StoreUnavailable


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Whatever the database or its driver raises becomes StoreUnavailable: an outage (the
    database is away or busy: wait, and keep the work), or a statement it refused, marked as
    such (``refused``: waiting will not cure it). Errors of neither kind pass unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if (classified := database_error(exc)) is None:
            raise
        raise classified from exc


def database_error(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable that ``exc`` stands for; None for an error of neither kind."""
    if isinstance(exc, PoolTimeout):
        return StoreUnavailable(f"no free database connection in time: {exc}")
    if (code := sqlstate(exc)) is not None:
        if code.startswith(_OUTAGE_CLASSES) or code == "55P03":
            return StoreUnavailable(f"database error: {exc}")
        return _refused(code, exc)
    if (name := _told(exc, "sqlite_errorname")) is not None:
        if name.startswith(_SQLITE_OUTAGES):
            return StoreUnavailable(f"database error: {exc}")
        return _refused(name, exc)
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # A value SQLAlchemy could not hand to the driver (its type's processing refused it).
        if isinstance(exc.orig, ValueError | TypeError):
            return _refused(type(exc.orig).__name__, exc)
        return database_error(exc.orig) if exc.orig is not None else None
    if isinstance(exc, IntegrityError | DataError | ProgrammingError | NotSupportedError):
        return _refused(type(exc.orig or exc).__name__, exc)
    if isinstance(exc, DBAPIError | OSError):
        return StoreUnavailable(f"database error: {exc}")
    if isinstance(exc, UnicodeError | OverflowError | struct.error):
        # The driver could not encode a value of the row (text that is not UTF-8, an integer
        # out of range): the database never saw it, and never will. (Other errors raised in a
        # transaction are left as they are: a bug in the caller is no refusal.)
        return _refused(type(exc).__name__, exc)
    return None


def _refused(code: str, exc: BaseException) -> StoreUnavailable:
    # The driver's words, without the statement and its values SQLAlchemy adds: a refusal is
    # logged with the image it concerns, and a row's values can be long.
    said = str(getattr(exc, "orig", None) or exc)
    if len(said) > _SAID:
        said = said[:_SAID] + "…"
    where = f"SQLSTATE {code}" if _SQLSTATE.fullmatch(code) else code
    return StoreUnavailable(f"the database refused the statement ({where}): {said}", refused=code)


_SQLSTATE = re.compile("[0-9A-Z]{5}")
_SAID = 300


# SQLSTATE classes of a database that is away or busy rather than refusing: connection (08),
# rolled back by a deadlock or serialisation (40), resources (53), operator intervention such
# as a shutdown (57), system errors (58); and 55P03, a lock not available.
_OUTAGE_CLASSES = ("08", "40", "53", "57", "58")
# SQLite's result codes of a database that is busy, unreachable or damaged rather than refusing
# a statement (extended codes start with these).
_SQLITE_OUTAGES = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_FULL",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_INTERRUPT",
    "SQLITE_PROTOCOL",
    "SQLITE_READONLY",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
)


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL error code behind a driver error, if there is one (SQLite has none)."""
    return _told(exc, "sqlstate")


def _told(exc: BaseException, attribute: str) -> str | None:
    """What the first error in ``exc``'s chain that has ``attribute`` says there."""
    for candidate in _causes(exc):
        value = getattr(candidate, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def _causes(exc: BaseException) -> tuple:
    # The error itself (asyncpg's, raised by a COPY on the driver's own connection), the
    # driver's behind SQLAlchemy's, and what that one wraps.
    return (
        exc,
        getattr(exc, "orig", None),
        exc.__cause__,
        getattr(exc.__cause__, "__cause__", None),
    )
