"""The `pixstream` command: the only place that reads settings and configures logging."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from pixstream import __version__, logs
from pixstream.settings import Settings

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@click.group()
@click.version_option(__version__, prog_name="pixstream")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level.")
@click.option("--json-logs", is_flag=True, help="One JSON object per log line.")
@click.pass_context
def main(ctx: click.Context, log_level: str, json_logs: bool) -> None:
    """PixStream: streaming image processing on Kafka, Faust, Pillow, S3 and PostgreSQL."""
    logs.configure(log_level, json_output=json_logs)
    ctx.obj = Settings()


# -- the local stack -------------------------------------------------------------------------
@main.group()
def stack() -> None:
    """Local Kafka, PostgreSQL and S3 (MinIO) without Docker, under .pixstream/."""


@stack.command("up")
@click.pass_obj
def stack_up(settings: Settings) -> None:
    """Start every service that is not running (idempotent) and bootstrap the bucket."""
    from pixstream import stack as local
    from pixstream.stack.base import StackError
    from pixstream.storage import ensure_bucket

    started = time.monotonic()
    try:
        for service in local.services(settings):
            click.echo(service.up().line())
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc
    _run(ensure_bucket(settings))
    click.echo(f"stack up in {time.monotonic() - started:.1f}s (state in {settings.home})")


@stack.command("down")
@click.pass_obj
def stack_down(settings: Settings) -> None:
    """Stop every process the stack started (by pid); data stays for the next `up`."""
    from pixstream import stack as local

    for service in reversed(local.services(settings)):
        service.down()
        click.echo(f"{service.name:<10} stopped")


@stack.command("status")
@click.pass_obj
def stack_status(settings: Settings) -> None:
    """Show each service, its address and whether it answers; exit 1 when one does not."""
    from pixstream import stack as local

    statuses = [service.status() for service in local.services(settings)]
    for status in statuses:
        click.echo(status.line())
    if not all(s.answers for s in statuses):
        sys.exit(1)


# -- setup ------------------------------------------------------------------------------------
@main.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Apply the PostgreSQL migrations (idempotent, under an advisory lock)."""
    from pixstream.db.migrate import apply_migrations

    applied = _run(apply_migrations(settings.database_url.get_secret_value()))
    click.echo("\n".join(f"applied {name}" for name in applied) or "migrations: up to date")


@main.group()
def topics() -> None:
    """Kafka topics declared in topics/."""


@topics.command("apply")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option(
    "--file",
    "path",
    type=click.Path(path_type=Path),
    default=None,
    help="The declaration (default: topics/topics.toml).",
)
@click.pass_obj
def topics_apply(settings: Settings, dry_run: bool, path: Path | None) -> None:
    """Create missing topics, update configs, raise partition counts (idempotent)."""
    from pixstream.topics import apply_topics, load_topics

    declared = load_topics(settings, path)
    changes = _run(apply_topics(settings.kafka_bootstrap, declared, dry_run=dry_run))
    click.echo("\n".join(str(c) for c in changes) or "topics: no change")


@main.group()
def schemas() -> None:
    """JSON Schemas of the events and the AsyncAPI document, generated from the models."""


@schemas.command("write")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("schemas"))
def schemas_write(directory: Path) -> None:
    """Write schemas/ (JSON Schemas and asyncapi.json) from the pydantic models."""
    from pixstream import asyncapi
    from pixstream.schemas import write

    for path in [*write(directory), asyncapi.write(directory)]:
        click.echo(f"wrote {path}")


@main.command()
@click.option("--processes", default=2, show_default=True, help="Worker processes.")
@click.pass_obj
def dev(settings: Settings, processes: int) -> None:
    """Everything local: the stack, topics, migrations, the ingress and the workers."""
    from pixstream.dev import run_dev
    from pixstream.stack.base import StackError

    try:
        sys.exit(run_dev(settings, processes))
    except StackError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--steps",
    "spec_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help='A job spec JSON file ({"steps": [...]}), e.g. examples/spec.json.',
)
@click.option("--preset", help="A preset name instead of --steps (see GET /v1/presets).")
@click.option("--wait", is_flag=True, help="Follow the jobs until they finish.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save the outputs as OUT/<file stem>/<step>.<ext> (implies --wait).",
)
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Uploads at once.")  # fmt: skip
@click.option("--json", "json_output", is_flag=True, help="Print the results as JSON.")
@click.option("--url", "base_url", help="The ingress (default: from PIXSTREAM_HTTP_*).")
@click.option("--api-key", envvar="PIXSTREAM_API_KEY", help="Act as this key's tenant.")
@click.option("--priority", type=click.Choice(["interactive", "batch"]),
              help="batch: taken only while interactive work has nothing waiting "
                   "(default: the spec's, else interactive).")  # fmt: skip
@click.pass_obj
def submit(
    settings: Settings,
    paths: tuple[str, ...],
    spec_file: Path | None,
    preset: str | None,
    wait: bool,
    out: Path | None,
    concurrency: int,
    json_output: bool,
    base_url: str | None,
    api_key: str | None,
    priority: str | None,
) -> None:
    """Submit images (files, folders of images, globs) with a spec, show live progress,
    download the outputs; a bad file is reported and the others go on."""
    from pixstream import submitting

    url = base_url or f"http://{settings.http_host}:{settings.http_port}"
    try:
        spec = submitting.load_spec(spec_file, preset)
        if priority is not None:
            spec = {**spec, "priority": priority}
        code = submitting.run(url, paths, spec, concurrency=concurrency,
                              wait=wait or out is not None, out=out,
                              json_output=json_output, api_key=api_key)  # fmt: skip
    except submitting.SubmitFailed as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.pass_obj
def health(settings: Settings) -> None:
    """Deep check of Kafka, PostgreSQL and S3; exit 0 only when all answer."""
    from pixstream.health import check_all

    report = _run(check_all(settings))
    for name, check in report.checks.items():
        click.echo(f"{name:<10} {'ok' if check.ok else 'FAIL'}  {check.detail}")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.option("--ops", default=None, help="Comma-separated operations to run (default: all).")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    help="Worker processes in the same consumer group (use one per core).",
)
@click.pass_obj
def worker(settings: Settings, ops: str | None, processes: int) -> None:
    """The Faust worker: planner, op agents, tracker, recorder, notifier, retry relays."""
    from pixstream.worker.run import run_worker, supervise

    selected = [o.strip() for o in ops.split(",") if o.strip()] if ops else None
    if processes > 1:
        sys.exit(supervise(settings, processes, sys.argv[1:]))
    run_worker(settings, selected)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default: PIXSTREAM_HTTP_HOST).")
@click.option("--port", type=int, default=None, help="Port (default: PIXSTREAM_HTTP_PORT).")
@click.pass_obj
def ingress(settings: Settings, host: str | None, port: int | None) -> None:
    """Run the HTTP ingress alone; SIGINT/SIGTERM stop it after in-flight requests finish."""
    from aiohttp import web

    from pixstream.ingress import create_app
    from pixstream.ingress.exposure import assess

    host = host or settings.http_host
    port = settings.http_port if port is None else port
    exposure = assess(settings, host)
    for warning in exposure.warnings:
        click.echo(f"warning: {warning}", err=True)
    if exposure.refusals:
        raise click.ClickException("; ".join(exposure.refusals))
    sockets = [_listen(host, port)]
    click.echo(f"PixStream ingress on http://{host}:{port}/")
    if settings.admin_port:
        sockets.append(_listen(settings.admin_host, settings.admin_port))
        click.echo(f"metrics and health on http://{settings.admin_host}:{settings.admin_port}/")
    # run_app turns SIGINT and SIGTERM into a graceful shutdown: it stops accepting, waits
    # up to shutdown_timeout for in-flight requests, then runs the cleanup contexts.
    web.run_app(create_app(settings), sock=sockets, shutdown_timeout=15, print=None)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming what holds the address."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host.strip("[]"), port), family=family, backlog=1024)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


@main.group()
def keys() -> None:
    """API keys and webhook secrets of tenants (a tenant exists from its first key)."""


def _db(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    import asyncpg

    async def run() -> T:
        try:
            conn = await asyncpg.connect(settings.database_url.get_secret_value(), timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise click.ClickException(f"PostgreSQL is not reachable: {exc}") from exc
        try:
            return await use(conn)
        finally:
            await conn.close()

    return _run(run())


def _tenant_name(name: str) -> str:
    from pixstream import apikeys

    try:
        return apikeys.check_tenant(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from exc


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts as.")
@click.option("--label", default=None, help="What the key is for (shown by `keys list`).")
@click.pass_obj
def keys_create(settings: Settings, tenant: str, label: str | None) -> None:
    """Print a new API key (shown this once; only its hash is stored) and its id."""
    from pixstream.db import tenants

    name = _tenant_name(tenant)
    if name == "anonymous":
        raise click.BadParameter("'anonymous' is the tenant of requests without a key")
    info, key = _db(settings, lambda conn: tenants.create_key(conn, name, label))
    click.echo(f"key id  {info.key_id}")
    click.echo(f"tenant  {info.tenant}")
    click.echo(f"api key {key}")
    click.echo("Store it now, it is not shown again; send it as 'Authorization: Bearer <key>'.")


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.pass_obj
def keys_list(settings: Settings, tenant: str | None) -> None:
    """Show every key: id, tenant, label, created, last used, revoked."""
    from pixstream.db import tenants

    found = _db(settings, lambda conn: tenants.list_keys(conn, tenant))
    click.echo(f"{'id':<22} {'tenant':<16} {'created':<20} {'last used':<20} {'revoked':<20} label")

    def when(t: Any) -> str:
        return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"

    for k in found:
        click.echo(
            f"{k.key_id:<22} {k.tenant:<16} {when(k.created_at):<20} {when(k.last_used_at):<20} "
            f"{when(k.revoked_at):<20} {k.label or ''}"
        )


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(settings: Settings, key_id: str) -> None:
    """Make the key fail from the next request on."""
    from pixstream.db import tenants

    tenant = _db(settings, lambda conn: tenants.revoke_key(conn, key_id))
    if tenant is None:
        raise click.ClickException(f"no key {key_id!r} (`pixstream keys list` shows them)")
    click.echo(f"revoked {key_id} of tenant {tenant}")


@keys.command("webhook-secret")
@click.option("--tenant", required=True, help="The tenant whose webhooks it signs.")
@click.option(
    "--rotate",
    is_flag=True,
    help="Make a new secret; the old one also signs for PIXSTREAM_WEBHOOK_ROTATION_SECONDS.",
)
@click.pass_obj
def keys_webhook_secret(settings: Settings, tenant: str, rotate: bool) -> None:
    """Print the secret that signs the tenant's webhooks (made on first use)."""
    from pixstream.db import tenants

    name = _tenant_name(tenant)
    if name == "anonymous":
        raise click.BadParameter(
            "the anonymous tenant signs with PIXSTREAM_WEBHOOK_SECRET", param_hint="--tenant"
        )
    click.echo(_db(settings, lambda conn: tenants.webhook_secret(conn, name, rotate=rotate)))


@main.group()
def dlq() -> None:
    """Dead letters: records that could not be processed, with their context."""


@dlq.command("list")
@click.pass_obj
def dlq_list(settings: Settings) -> None:
    """Show every dead letter: id, time, key, origin, attempts and error."""
    from pixstream.dlq import read_dead_letters

    letters = _run(read_dead_letters(settings))
    for letter in letters:
        click.echo(letter.summary())
    click.echo(f"{len(letters)} dead letter(s) in {settings.topic('dlq')}")


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, help="A dead letter id (partition:offset); repeatable.")
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter not replayed yet.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed, send nothing.")
@click.pass_obj
def dlq_replay(settings: Settings, ids: tuple[str, ...], replay_all: bool, dry_run: bool) -> None:
    """Re-drive dead letters to their original topics, each at most once."""
    from pixstream.dlq import read_dead_letters, replay

    if bool(ids) == replay_all:
        raise click.UsageError("give --id (one or more) or --all")
    letters = _run(read_dead_letters(settings))
    if ids:
        known = {d.id: d for d in letters}
        missing = [i for i in ids if i not in known]
        if missing:
            raise click.ClickException(f"no dead letter with id {', '.join(missing)}")
        letters = [known[i] for i in ids]
    results = _run(replay(settings, letters, dry_run=dry_run))
    verb = "would replay" if dry_run else "replayed"
    for letter, replayed in results:
        state = f"{verb} to {letter.original_topic}" if replayed else "already replayed, skipped"
        click.echo(f"{letter.id:<8} {state}")
    click.echo(f"{sum(r for _, r in results)} {verb}, {sum(not r for _, r in results)} skipped")
