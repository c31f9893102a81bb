"""The fault suite's short form, on every `make test`: two worker processes SIGKILLed a few
times, a poison record on an op topic, jobs through HTTP and Kafka, and the same oracles as
`make chaos` (tests/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixstream.settings import Settings
from tests.chaos import ChaosRun, Options, make_schedule
from tests.conftest import create_database, drop_database

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.s3,
    pytest.mark.postgres,
]

SEED = 9  # the schedule is printed with the run's output; change it to explore


async def test_two_workers_killed_and_a_poison_record_lose_nothing_and_repeat_nothing(
    services: Settings, template_database: str, tmp_path: Path
) -> None:
    schedule = make_schedule(
        SEED, 50.0, ["poison"], kill_every=(8.0, 14.0), restart_after=(1.0, 3.0)
    )
    url = await create_database(services, template_database)
    try:
        report = await ChaosRun(
            services, url, tmp_path, schedule, Options(interval=1.5, settle_seconds=90.0)
        ).run()
    finally:
        await drop_database(services, url)
    (tmp_path / "report.txt").write_text(report.summary())  # next to the workers' logs
    assert sum(f.name == "kill" for f in report.faults) >= 2
    assert report.jobs >= 10
    assert report.ok, report.summary()
