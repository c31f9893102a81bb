"""PostgreSQL's failures, translated once for every caller (the ingress, the worker's agents,
the reconciler, the delivery loop, the pruner).

A data error (SQLSTATE class 22) or a constraint violation (class 23) is the statement's
fault and stays what asyncpg raised. Anything else (the server shutting down or restarting,
too many connections, a read-only standby, a dropped socket, a timeout) is the database's
fault: `DatabaseUnavailable`, a TransientError. A consumer that cannot give a message back
retries in place (`retry_in_place`), since returning would let the message be acknowledged
without its effect; the ingress answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import asyncpg

from pixstream import errors

log = logging.getLogger(__name__)
T = TypeVar("T")

#: SQLSTATE classes that blame the statement, not the server.
STATEMENT_FAULTS: Final = frozenset({"22", "23"})
BACKOFF_FIRST_SECONDS: Final = 0.5
BACKOFF_MAX_SECONDS: Final = 10.0


class DatabaseUnavailable(errors.TransientError):
    """PostgreSQL is unavailable."""

    code = "database_unavailable"


def is_transient(exc: BaseException) -> bool:
    """Whether `exc`, raised while talking to PostgreSQL, may go away if the call is retried."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return sqlstate[:2] not in STATEMENT_FAULTS
    # InterfaceError covers a connection closed under the client; OSError and TimeoutError a
    # server that is unreachable or too slow (pool.acquire(timeout=...) raises TimeoutError).
    return isinstance(exc, asyncpg.InterfaceError | OSError | TimeoutError)


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Re-raise a transient PostgreSQL failure inside the block as DatabaseUnavailable."""
    try:
        yield
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise DatabaseUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        raise


async def retry_in_place(
    run: Callable[[], Awaitable[T]],
    *,
    what: str,
    stopping: Callable[[], bool],
    extra: Mapping[str, Any] | None = None,
) -> T:
    """`run()` until PostgreSQL takes it, backing off to 10 s; raises only a statement's own
    error, or DatabaseUnavailable once `stopping()` says the process is shutting down (the
    message is then not acknowledged and comes back to the next consumer)."""
    delay = BACKOFF_FIRST_SECONDS
    while True:
        try:
            async with translated():
                return await run()
        except DatabaseUnavailable as exc:
            if stopping():
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay, extra=extra)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
