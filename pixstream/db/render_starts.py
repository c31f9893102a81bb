"""Renders started but not concluded, per task, in PostgreSQL: the one count of crashes that
a worker killed mid-render cannot take with it."""

from __future__ import annotations

from typing import Any, Final

START: Final = """
INSERT INTO render_starts (task_id, job_id, starts) VALUES ($1, $2, 1)
ON CONFLICT (task_id) DO UPDATE
    SET starts = render_starts.starts + 1, updated_at = now()
RETURNING starts
"""
CONCLUDE: Final = "DELETE FROM render_starts WHERE task_id = $1"


async def start(conn: Any, task_id: str, job_id: str) -> int:
    """Count a render of `task_id` as started; how many started without a conclusion,
    this one included."""
    return int(await conn.fetchval(START, task_id, job_id))


async def conclude(conn: Any, task_id: str) -> None:
    """The task has its answer (outputs or a permanent failure)."""
    await conn.execute(CONCLUDE, task_id)
