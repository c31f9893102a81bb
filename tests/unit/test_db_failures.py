"""The one translation of PostgreSQL failures: which errors are retried, which are the
statement's own."""

from __future__ import annotations

import asyncpg
import pytest

from pixstream import errors
from pixstream.db.failures import DatabaseUnavailable, is_transient, retry_in_place, translated


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.PostgresConnectionError("connection failure"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_server_side_failures_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.CheckViolationError("new row violates check constraint"),
        asyncpg.NotNullViolationError("null value in column"),
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type json"),
        asyncpg.DataError("value too long"),
        ValueError("not a database error at all"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_statement_faults_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


async def test_translated_raises_database_unavailable_for_a_transient_failure() -> None:
    with pytest.raises(DatabaseUnavailable, match="AdminShutdownError") as caught:
        async with translated():
            raise asyncpg.AdminShutdownError("terminating connection")
    assert isinstance(caught.value, errors.TransientError)


async def test_translated_leaves_a_constraint_violation_alone() -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        async with translated():
            raise asyncpg.UniqueViolationError("duplicate key")


async def test_retry_in_place_retries_until_the_server_answers() -> None:
    failures = [
        asyncpg.TooManyConnectionsError("too many"),
        asyncpg.ReadOnlySQLTransactionError("read-only"),
    ]
    calls = 0

    async def run() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "written"

    assert await retry_in_place(run, what="a write", stopping=lambda: False) == "written"
    assert calls == 3


async def test_retry_in_place_gives_up_only_when_stopping() -> None:
    async def run() -> None:
        raise asyncpg.AdminShutdownError("shutting down")

    with pytest.raises(DatabaseUnavailable):
        await retry_in_place(run, what="a write", stopping=lambda: True)
