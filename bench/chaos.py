"""The fault suite, long form (`make chaos`): K runs of N minutes of faults on the local stack,
a table of what each run saw, and the figures appended to docs/reliability.md.

    python -m bench.chaos [--minutes 5] [--runs 5] [--seed S] [--retry-attempts 1]

The engine and its oracles are tests/chaos.py (the short form runs in `make test`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from pixstream.health import check_all
from pixstream.settings import Settings
from tests.chaos import SCRIPTED, Options, Report, machine, make_schedule, run_once

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
PRIVATE_S3_PORT = 29100  # not the e2e tests' 29000: both may run at once


def table(reports: list[Report]) -> str:
    head = (
        "| run | seed | result | jobs (HTTP+Kafka) | faults | re-drives | settle after last"
        " fault | duplicates delivered (events/webhooks) | dead-lettered jobs | PG rows"
        " (jobs/idem/deliveries/replays) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for i, r in enumerate(reports, 1):
        kills = sum(1 for f in r.faults if f.name == "kill")
        rows.append(
            f"| {i} | {r.seed} | {'PASS' if r.ok else 'FAIL'} | {r.jobs} ({r.jobs_http}+"
            f"{r.jobs_kafka}) | {len(r.faults)} ({kills} kills) | {r.redrives} |"
            f" {'-' if r.settle_seconds is None else f'{r.settle_seconds:.1f}s'} |"
            f" {r.duplicate_events}/{r.duplicate_webhooks} | {r.dead_lettered_jobs} |"
            f" {'/'.join(str(v) for v in r.rows.values())} |"
        )
    return "\n".join([head, *rows])


def record(args: argparse.Namespace, reports: list[Report], command: str) -> None:
    failed = [
        f"- run {i} (seed {r.seed}): "
        + "; ".join(f"{c.name} {c.detail}" for c in r.checks if not c.ok)
        for i, r in enumerate(reports, 1)
        if not r.ok
    ]
    faults = "\n".join(
        f"  - run {i}: "
        + ", ".join(f"{f.name}@{f.start:.0f}-{f.end:.0f}s" for f in r.faults if f.name != "kill")
        + f"; {sum(1 for f in r.faults if f.name == 'kill')} worker SIGKILLs"
        for i, r in enumerate(reports, 1)
    )
    passed = sum(r.ok for r in reports)
    attempts = (
        "the project's default settings"
        if args.retry_attempts is None
        else f"retry_attempts={args.retry_attempts} (the rest the project's defaults)"
    )
    text = (
        f"\n## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {passed} of {len(reports)} runs passed\n\n"
        f"`{command}` on {machine()}; {args.minutes} min of worker kills per run, two `pixstream"
        f" worker` processes, {attempts}.\n\n"
        f"{table(reports)}\n\nFaults (seconds after the faults began):\n{faults}\n"
        + ("\nFailed oracles:\n" + "\n".join(failed) + "\n" if failed else "")
    )
    if not DOC.exists():
        DOC.write_text(HEADER)
    with DOC.open("a") as doc:
        doc.write(text)


HEADER = """# Reliability: the fault suite's figures

`make chaos` (bench/chaos.py, engine tests/chaos.py) runs the real pipeline on the local
stack (two `pixstream worker` processes, the ingress, jobs through HTTP and produced straight
to Kafka, a webhook receiver on loopback) under a seeded schedule: a worker SIGKILLed every
10-30 s and restarted after 1-5 s, poison records on an op topic followed by valid jobs, the
broker SIGKILLed and restarted, PostgreSQL restarted, S3 (a private MinIO) hung 20 s, and
hung past the retry budget (SIGSTOPped until attempts time out, then killed until jobs are
dead-lettered, then back, then `pixstream dlq replay --all`), the DLQ refusing a dead letter
(`max.message.bytes` 1024: the source offset must stay uncommitted), a poison too big for the
DLQ (dead-lettered as a truncated copy). The oracles: every accepted job ends, once (one
terminal event id; repeats of the same id are "duplicates delivered"), terminal in
PostgreSQL, outputs in S3 decodable by Pillow, one `webhook-id` per job with signatures valid
for the `standardwebhooks` package, every partition of every consumed topic committed to its
end, zero re-drives by the reconciler, every job terminal within 120 s of the last fault.

Settings are the project's defaults unless a run says otherwise (`--retry-attempts`). Runs
before 2026-12-02 12:00 UTC lowered `retry_attempts` to 1: a hung S3 then cost an attempt 2 to
2.5 minutes (botocore's 3 x 30 s read timeouts) and the planner took one job at a time.
"""


def keep_logs(workdir: Path, seed: int) -> Path:
    """Copy a failed run's worker logs out of its temporary directory."""
    keep = Path(tempfile.mkdtemp(prefix=f"pixstream-chaos-{seed}-"))
    for log in workdir.glob("worker-*.log"):
        (keep / log.name).write_bytes(log.read_bytes())
    return keep


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="worker kills per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None, help="of the first run (random)")
    parser.add_argument(
        "--retry-attempts", type=int, default=None, help="the project's default when omitted"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between jobs")
    parser.add_argument("--no-record", action="store_true", help="do not write docs/reliability.md")
    args = parser.parse_args()
    # The clients' reconnect chatter while the broker or PostgreSQL is down would bury the
    # run's own lines; PixStream's warnings (e.g. the ingress's 503s) stay.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "asyncio", "asyncpg"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    services = Settings()
    report = await check_all(services)
    if not report.ok:
        print("services not reachable; start them with `make up`", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    options = Options(
        interval=args.interval, retry_attempts=args.retry_attempts, private_s3_port=PRIVATE_S3_PORT
    )
    reports = []
    for run in range(args.runs):
        schedule = make_schedule(seed + run, args.minutes * 60, SCRIPTED)
        print(f"== run {run + 1}/{args.runs}, seed {schedule.seed}", flush=True)
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="pixstream-chaos-") as tmp:
            result = await run_once(services, Path(tmp), schedule, options)
            if not result.ok:
                print(f"worker logs kept in {keep_logs(Path(tmp), schedule.seed)}")
        print(result.summary(), f"\n  run took {time.monotonic() - began:.0f}s", flush=True)
        reports.append(result)
    print(table(reports))
    if not args.no_record:
        record(args, reports, "python -m bench.chaos " + " ".join(sys.argv[1:]))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
