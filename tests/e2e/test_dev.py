"""`pixstream dev` started and stopped as a user does (SIGINT is Ctrl-C, SIGTERM a service
manager), while jobs run: with the shared stack up, and with a private Kafka and PostgreSQL
that go away first. Whatever the case, no process of that run may be left afterwards: the
check is every process whose environment carries the run's own topic prefix, which the
ingress, the supervisor, the workers, their forkservers and render processes all inherit.
A second `pixstream dev` on the same ports is refused, and the workers' metrics port reports
every worker process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import pytest
from pydantic import SecretStr

from pixstream import stack
from pixstream.settings import Settings
from pixstream.stack.postgres import PostgresService
from tests.conftest import create_database, drop_database, isolated, unique
from tests.harness import delete_topics, jpeg_bytes, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Liveness bounds, not measurements: a run that has not started or stopped by then failed.
START_SECONDS = 120.0
STOP_SECONDS = 120.0
SPEC = {
    "steps": [
        {"id": "web", "op": "resize", "params": {"width": 1600}},
        {"id": "webp", "op": "convert", "params": {"format": "webp"}, "input": "web"},
        {"id": "thumb", "op": "thumbnail", "params": {"size": 256}},
    ]
}
JOBS = 8


def _free_port(pair: bool = False) -> int:
    """A free loopback port (and the one after it, for Kafka's controller, when `pair`)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair or port >= 65535:
            return port
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port + 1))
            return port


@dataclass
class Dev:
    """One `pixstream dev` child and what it is known by."""

    settings: Settings
    proc: subprocess.Popen[bytes]
    log_path: Path
    marker: str  # the topic prefix, in the environment of every process of the run
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this run but the test itself, by its environment."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                if process.environ().get("PIXSTREAM_TOPIC_PREFIX") == self.marker:
                    found.append(process)
        return found


def _start(settings: Settings, workdir: Path, **env: str) -> Dev:
    settings = settings.model_copy(
        update={"http_port": _free_port(), "worker_metrics_port": _free_port()}
    )
    full = settings_env(
        settings,
        PIXSTREAM_HTTP_HOST="127.0.0.1",
        PIXSTREAM_WORKER_METRICS_PORT=str(settings.worker_metrics_port),
        **env,
    )
    log_path = workdir / f"dev-{settings.topic_prefix}.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pixstream", "dev", "--processes", "2"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dev = Dev(settings, proc, log_path, settings.topic_prefix, full)
    deadline = time.monotonic() + START_SECONDS
    while "PixStream is running" not in dev.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            _end(dev)
            pytest.fail(f"pixstream dev did not start:\n{dev.log()[-4000:]}")
        time.sleep(0.5)
    return dev


def _end(dev: Dev) -> None:
    """Whatever a failed test left: SIGKILL the run's processes."""
    for process in dev.processes():
        with contextlib.suppress(psutil.Error):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        dev.proc.wait(10)


async def _submit(session: aiohttp.ClientSession, dev: Dev, image: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", image, filename="photo.jpg", content_type="image/jpeg")
    form.add_field("spec", json.dumps(SPEC), content_type="application/json")
    async with session.post(f"{dev.url}/v1/jobs", data=form) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["job_id"])


async def _status(session: aiohttp.ClientSession, dev: Dev, job_id: str) -> str:
    async with session.get(f"{dev.url}/v1/jobs/{job_id}") as resp:
        return str((await resp.json())["status"])


async def _jobs_running(dev: Dev) -> tuple[list[str], int]:
    """Submit JOBS jobs and return once the first has completed (the others still run):
    the ids, and how many had completed then."""
    image = jpeg_bytes((3000, 2000))
    async with aiohttp.ClientSession() as session:
        ids = [await _submit(session, dev, image) for _ in range(JOBS)]
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            statuses = [await _status(session, dev, j) for j in ids]
            if "completed" in statuses:
                return ids, statuses.count("completed")
            await asyncio.sleep(0.3)
    pytest.fail(f"no job completed:\n{dev.log()[-4000:]}")


def _seen_tree(dev: Dev) -> list[psutil.Process]:
    """The run's processes now; render processes included (they start with the workers)."""
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        tree = dev.processes()
        forkservers = [p for p in tree if "forkserver" in " ".join(p.cmdline())]
        if len(forkservers) >= 2:
            return tree
        time.sleep(0.5)
    pytest.fail(f"the workers' render processes never started:\n{dev.log()[-4000:]}")


async def _stop_and_check(dev: Dev, signum: int) -> str:
    """Signal the run, wait for it to end, and assert nothing of it is left; its output."""
    tree = await asyncio.to_thread(_seen_tree, dev)
    assert any("pixstream ingress" in " ".join(p.cmdline()) for p in tree)
    dev.proc.send_signal(signum)
    try:
        await asyncio.to_thread(dev.proc.wait, STOP_SECONDS)
    except subprocess.TimeoutExpired:
        left = dev.processes()
        _end(dev)
        pytest.fail(f"pixstream dev did not exit; left: {left}\n{dev.log()[-4000:]}")
    left = dev.processes()
    survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if left or survivors:
        _end(dev)
    assert left == [], f"left behind: {[(p.pid, p.cmdline()) for p in left]}"
    assert survivors == []
    assert dev.proc.returncode == 0, dev.log()[-4000:]
    return dev.log()


# -- the shared stack, up throughout -------------------------------------------------------
@pytest.fixture
async def dev_settings(services: Settings, template_database: str) -> AsyncIterator[Settings]:
    url = await create_database(services, template_database)
    settings = isolated(services, url)
    try:
        yield settings
    finally:
        await delete_topics(settings)
        await drop_database(services, url)


async def _metrics(dev: Dev) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{dev.settings.worker_metrics_port}/metrics") as resp,
    ):
        assert resp.status == 200
        return await resp.text()


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (line.split(" ")[0], float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(name)
    ]


async def test_sigint_with_jobs_running_leaves_nothing_and_metrics_cover_every_worker(
    dev_settings: Settings, tmp_path: Path
) -> None:
    dev = await asyncio.to_thread(_start, dev_settings, tmp_path)
    try:
        ids, _ = await _jobs_running(dev)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + START_SECONDS
            while time.monotonic() < deadline:
                statuses = [await _status(session, dev, j) for j in ids]
                if all(s == "completed" for s in statuses):
                    break
                await asyncio.sleep(0.5)
            assert all(s == "completed" for s in statuses), statuses
        text = await _metrics(dev)
        up = _samples(text, "pixstream_worker_up{")
        assert len(up) == 2, text  # one series per worker process, by pid
        tasks = sum(
            v for name, v in _samples(text, "pixstream_tasks_total{") if "completed" in name
        )
        # One task per job here (both roots read the source: one decode); a job whose task
        # was rendered twice (a rebalance while the second worker joined) counts twice.
        assert tasks >= len(ids), text
        # More jobs, so the workers are busy when the signal comes.
        await _jobs_running(dev)
        out = await _stop_and_check(dev, signal.SIGINT)
    finally:
        _end(dev)
    assert "The local stack is still running" in out
    assert "make down" in out


async def test_sigterm_with_jobs_running_and_a_second_dev_refused(
    dev_settings: Settings, tmp_path: Path
) -> None:
    dev = await asyncio.to_thread(_start, dev_settings, tmp_path)
    try:
        await _jobs_running(dev)
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pixstream", "dev"],
            env=dev.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode != 0
        ingress = next(p for p in dev.processes() if "pixstream ingress" in " ".join(p.cmdline()))
        assert f"port 127.0.0.1:{dev.settings.http_port} is already in use" in second.stdout
        assert f"pid {ingress.pid} (pixstream ingress)" in second.stdout
        assert "PixStream is running" not in second.stdout
        await _stop_and_check(dev, signal.SIGTERM)
    finally:
        _end(dev)


# -- a private stack that goes away first -----------------------------------------------------
@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Kafka, PostgreSQL and MinIO of this module's own, on free ports, in its own home."""
    home = tmp_path_factory.mktemp("stack") / "home"
    settings = Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{_free_port(pair=True)}",
        database_url=SecretStr(
            f"postgresql://pixstream:pixstream@127.0.0.1:{_free_port()}/pixstream"
        ),
        s3_endpoint_url=f"http://127.0.0.1:{_free_port()}",
        topic_prefix=unique("t"),
    )
    settings = settings.model_copy(update={"app_id": settings.topic_prefix})
    try:
        yield settings
    finally:
        for service in reversed(stack.services(settings)):
            service.down()
        # The cluster may live outside the home (see PostgresService._data_dir).
        shutil.rmtree(PostgresService(home.resolve(), settings).data.parent, ignore_errors=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_stop_after_kafka_and_postgres_went_away(
    private_stack: Settings, tmp_path: Path, signum: int
) -> None:
    for service in stack.services(private_stack):
        await asyncio.to_thread(service.up)
    dev = await asyncio.to_thread(
        _start, private_stack, tmp_path, PIXSTREAM_HOME=str(private_stack.home)
    )
    try:
        await _jobs_running(dev)
        for service in stack.services(private_stack):
            if service.name in ("kafka", "postgres"):
                await asyncio.to_thread(service.down)
        # Let the workers notice (their connections fail) before they are asked to stop.
        await asyncio.sleep(3)
        before = dev.log().count("\n")
        await asyncio.sleep(5)
        flood = dev.log().count("\n") - before
        out = await _stop_and_check(dev, signum)
    finally:
        _end(dev)
    # Two workers and an ingress retrying a gone Kafka once logged ~70 lines a second each.
    assert flood < 100, out[-4000:]
    assert "The local stack is still running: minio" in out
