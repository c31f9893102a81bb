"""`make bench`: PixStream against the codec limit on the same corpus, spec and cores, in one run.

    python -m bench.suite CORPUS_DIR [--rounds 2] [--jobs 68] [--clients 8] [--profile]

Each round runs, one after the other on the same machine: (a) the limit, the contract's
example spec in a plain Pillow loop on `--processes` processes with the photos in RAM, once
with one decode per job and once with a decode per output (what a proxy pays); (b) PixStream
through HTTP: `--clients` clients each POST a job and wait for its `job.completed`, against an
ingress and `worker --processes N` of the benchmark's own on the local stack; (c) PixStream
through Kafka: `--jobs` job requests produced at once, their sources already in S3. After
each burst, `--paced-jobs` jobs at `--rate` jobs/s give the latency from the request to
`job.completed`, from which the render time of PixStream's own render() of the photo, measured
alone beforehand, is subtracted: what the pipeline adds. The CPU of every process on the
machine is read from /proc over every phase and the peak RSS of every PixStream process is
kept. `--profile` adds a Kafka burst with py-spy on one worker process and summarises it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench import limit, pyspy
from bench.ingress import post_job
from bench.isolated import quiet_kafka_logs, wait_http
from bench.pipeline import (
    Burst,
    Paced,
    Stage,
    kafka_burst,
    kafka_paced,
    paced,
    photos_of,
    staged,
    wait_ready,
)
from bench.report import median, per_job_ms, quantile, ratio, table
from bench.sampler import BY_NAME, Sampler
from pixstream import stack
from pixstream.settings import Settings
from tests.chaos import machine

LIMIT_ONE = "limit: plain Pillow, one decode per job"
LIMIT_TWO = "plain Pillow, one decode per output (a proxy)"
HTTP = "PixStream through HTTP"
KAFKA = "PixStream through Kafka"


@dataclass
class Phase:
    name: str
    jobs: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds by process group

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


@dataclass
class Results:
    render_ms: list[float]
    rounds: list[dict[str, Phase]] = field(default_factory=list)
    latency: dict[str, list[Paced]] = field(default_factory=dict)
    failed: int = 0
    profile: pyspy.Loop | None = None
    profile_cpu: Phase | None = None
    traffic: dict[str, int] = field(default_factory=dict)  # before the profile's burst
    jobs_seen: int = 0


async def measured(
    sampler: Sampler, name: str, jobs: int, work: Callable[[], object]
) -> tuple[Phase, object]:
    start = sampler.mark()
    result = work()
    if asyncio.iscoroutine(result):
        result = await result
    end = sampler.mark()
    seconds = result.seconds if isinstance(result, Burst) else end - start
    return Phase(name, jobs, seconds, sampler.cpu(start, end)), result


async def http_burst(
    stage: Stage, session: aiohttp.ClientSession, photos: Sequence[bytes], count: int, clients: int
) -> Burst:
    """`clients` clients, each submitting a job and waiting for its end before the next."""
    indices = iter(range(count))
    jobs: list[str] = []

    async def client() -> None:
        for i in indices:
            job = await post_job(session, stage.url, photos[i % len(photos)])
            jobs.append(job)
            await stage.finished.one(job)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    end = await stage.finished.all(jobs)
    return Burst(count, end - start, len(stage.finished.failed & set(jobs)))


async def http_paced(
    stage: Stage, session: aiohttp.ClientSession, photos: Sequence[bytes], count: int, rate: float
) -> Paced:
    jobs: list[str] = []

    async def submit(i: int) -> tuple[str, float]:
        sent = time.perf_counter()
        job = await post_job(session, stage.url, photos[i % len(photos)])
        jobs.append(job)
        return job, sent

    result = await paced(count, rate, submit, stage.finished)
    return Paced(rate, result.latencies, len(stage.finished.failed & set(jobs)))


async def run(args: argparse.Namespace, sampler: Sampler, logs: Path) -> Results:
    photos = photos_of(args.corpus)
    with limit.Loop(photos, args.processes) as loop:
        results = Results(render_ms=await asyncio.to_thread(loop.render_ms))
        async with (
            staged(args.processes, ingress=True, logs=logs) as stage,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.clients)) as session,
        ):
            sampler.root(stage.worker.pid, "worker supervisor" if args.processes > 1 else "worker")
            assert stage.ingress is not None
            sampler.root(stage.ingress.pid, "ingress")
            print("warming up: the workers' group, a job per render slot, the ingress", flush=True)
            await wait_ready(stage, photos, args.processes * 4, args.processes)
            await wait_http(stage.url, stage.ingress.proc)
            await http_burst(stage, session, photos, args.clients, args.clients)
            for number in range(1, args.rounds + 1):
                print(f"round {number}", flush=True)
                phases: dict[str, Phase] = {}
                for name, job in (
                    (LIMIT_ONE, limit.one_decode),
                    (LIMIT_TWO, limit.decode_per_output),
                ):
                    start = sampler.mark()
                    rate = await asyncio.to_thread(loop.run, job, args.jobs)
                    cpu = sampler.cpu(start, sampler.mark())
                    phases[name] = Phase(name, args.jobs, args.jobs / rate, cpu)
                phases[HTTP], _ = await measured(
                    sampler,
                    HTTP,
                    args.jobs,
                    lambda: http_burst(stage, session, photos, args.jobs, args.clients),
                )
                slow = await http_paced(stage, session, photos, args.paced_jobs, args.rate)
                results.latency.setdefault(HTTP, []).append(slow)
                phases[KAFKA], _ = await measured(
                    sampler, KAFKA, args.jobs, lambda: kafka_burst(stage, photos, args.jobs)
                )
                slow = await kafka_paced(stage, photos, args.paced_jobs, args.rate)
                results.latency.setdefault(KAFKA, []).append(slow)
                for name, phase in phases.items():
                    print(f"  {name}: {phase.rate:.2f} jobs/s", flush=True)
                print(f"  failed so far: {len(stage.finished.failed)}", flush=True)
                results.rounds.append(phases)
            results.failed = len(stage.finished.failed)
            results.traffic = await stage.traffic()
            results.jobs_seen = len(stage.finished.at)
            if args.profile:
                try:
                    results.profile, results.profile_cpu = await profiled(
                        stage, sampler, photos, args.jobs * 2, logs
                    )
                except (OSError, RuntimeError) as exc:  # py-spy may not ptrace here
                    print(f"no profile: {exc}", flush=True)
    return results


async def profiled(
    stage: Stage, sampler: Sampler, photos: Sequence[bytes], jobs: int, logs: Path
) -> tuple[pyspy.Loop, Phase]:
    """A Kafka burst with py-spy recording the first worker process."""
    workers = [p.pid for p in sampler.watched() if p.group == "worker" and p.rss]
    if not workers:
        raise SystemExit("no worker process to profile")
    out = logs / "worker.pyspy.txt"
    recording = pyspy.Recording(min(workers), out)
    await asyncio.sleep(1)  # py-spy attaches
    phase, _ = await measured(sampler, "profile", jobs, lambda: kafka_burst(stage, photos, jobs))
    await asyncio.to_thread(recording.stop)
    print(f"py-spy samples: {out}", flush=True)
    return pyspy.summarise(out, recording.cpu), phase


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    lines = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return lines[0] if lines else "?"


def render(args: argparse.Namespace, results: Results, sampler: Sampler) -> str:
    flags = (
        f"--rounds {args.rounds} --jobs {args.jobs} --paced-jobs {args.paced_jobs} "
        f"--rate {args.rate:g} --clients {args.clients} --processes {args.processes}"
        + (" --profile" if args.profile else "")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    out = [
        f"Command: `python -m bench.suite {args.corpus} {flags}`",
        f'Machine: {machine()}; `lscpu` model name "{cpu_model()}"; Python '
        f"{platform.python_version()}. Load average at the end: {load}. "
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    names = list(results.rounds[0])
    limits = [r[LIMIT_ONE].rate for r in results.rounds]
    proxies = [r[LIMIT_TWO].rate for r in results.rounds]
    rows = []
    for name in names:
        rates = [r[name].rate for r in results.rounds]
        rows.append(
            [name, *(f"{x:.2f}" for x in rates), median(rates),
             median([ratio(x, lim) for x, lim in zip(rates, limits, strict=True)]),
             median([ratio(x, p) for x, p in zip(rates, proxies, strict=True)])]
        )  # fmt: skip
    head = ["what", *(f"round {i + 1} jobs/s" for i in range(len(results.rounds)))]
    out += [table([*head, "median jobs/s", "/ limit", "/ proxy"], rows), ""]

    render_p50 = median(results.render_ms)
    rows = []
    for name, runs in results.latency.items():
        for i, run in enumerate(runs, 1):
            lat = [x * 1000 for x in run.latencies]
            own = [lat[j] - results.render_ms[j % len(results.render_ms)] for j in range(len(lat))]
            p50, p95 = quantile(lat, 0.5), quantile(lat, 0.95)
            rows.append(
                [f"{name}, round {i}", f"{run.rate:g}", len(lat), p50, p95, p50 - render_p50,
                 p95 - render_p50, quantile(own, 0.5), quantile(own, 0.95), run.failed]
            )  # fmt: skip
    out += [
        f"Paced: request to `job.completed`; PixStream's render() of the job alone: median "
        f"{render_p50:.0f} ms over the {len(results.render_ms)} photos (min "
        f"{min(results.render_ms):.0f}, max {max(results.render_ms):.0f}).",
        "",
        table(
            [
                "path",
                "jobs/s",
                "jobs",
                "p50 ms",
                "p95 ms",
                "p50 - render",
                "p95 - render",
                "added p50 (per job)",
                "added p95 (per job)",
                "failed",
            ],
            rows,
        ),
        "",
    ]

    groups = sorted({g for r in results.rounds for p in r.values() for g in p.cpu})
    phases = [*names, *(["profile"] if results.profile_cpu else [])]

    def cpu_of(name: str) -> list[dict[str, float]]:
        if name == "profile" and results.profile_cpu:
            return [per_job_ms(results.profile_cpu.cpu, results.profile_cpu.jobs)]
        return [per_job_ms(r[name].cpu, r[name].jobs) for r in results.rounds]

    def wall_ms(name: str) -> float:
        if name == "profile" and results.profile_cpu:
            return 1000 / results.profile_cpu.rate
        return median([1000 / r[name].rate for r in results.rounds])

    rows = [[g, *(median([c.get(g, 0.0) for c in cpu_of(n)]) for n in phases)] for g in groups]
    rows.append(["**total**", *(median([sum(c.values()) for c in cpu_of(n)]) for n in phases)])
    cores = os.cpu_count() or 1
    rows.append([f"wall ms per job x {cores} cores", *(wall_ms(n) * cores for n in phases)])
    out += [
        "CPU ms per job by process group (utime + stime from /proc, median over the rounds):",
        "",
        table(["group", *phases], rows),
        "",
    ]

    rows = []
    for proc in sampler.watched():
        last = proc.rss[-1][1] / 1024 if proc.rss else 0.0
        first = proc.rss[0][1] / 1024 if proc.rss else 0.0
        rows.append([proc.label, proc.peak_kb / 1024, first, last, len(proc.rss)])
    out += [
        "Memory (VmHWM is the kernel's peak; RSS sampled every 0.5 s):",
        "",
        table(["process", "peak RSS MB", "first RSS MB", "last RSS MB", "samples"], rows),
        "",
    ]
    if results.jobs_seen:
        rows = [[what, n / results.jobs_seen] for what, n in sorted(results.traffic.items()) if n]
        out += [
            f"Traffic per job ({results.jobs_seen} jobs, warm-up included; `<prefix>-...` "
            "are Faust's own topics, e.g. the tracker table's changelog):",
            "",
            table(["what", "per job"], rows),
            "",
        ]
    if results.profile:
        out += [profile_summary(results.profile), ""]
    out.append(f"Jobs that failed: {results.failed}.")
    return "\n".join(out)


def profile_summary(loop: pyspy.Loop, top: int = 15) -> str:
    busy = loop.samples - loop.idle
    lines = [
        f"py-spy, the first worker process's event loop: {loop.samples} samples, idle "
        f"{loop.share(loop.idle):.0%}, busy {loop.share(busy):.0%}.",
        "",
        table(
            ["thread", "CPU during the burst (s, from /proc)"],
            [[name, f"{seconds:.2f}"] for name, seconds in loop.threads.items() if seconds],
        ),
        "",
        table(
            ["innermost package (busy samples)", "share of all samples"],
            [[p, f"{loop.share(n):.1%}"] for p, n in loop.packages.most_common(top)],
        ),
        "",
        table(
            ["what the loop ran (busy samples)", "share of all samples"],
            [[f"`{f}`", f"{loop.share(n):.1%}"] for f, n in loop.callbacks.most_common(top)],
        ),
        "",
        table(
            ["function (inclusive, below the loop)", "share of all samples"],
            [[f"`{f}`", f"{loop.share(n):.1%}"] for f, n in loop.functions.most_common(top * 2)],
        ),
    ]
    return "\n".join(lines)


def root_services(sampler: Sampler) -> None:
    """The local stack's processes, when this machine runs it (`pixstream stack up`)."""
    for service in stack.services(Settings()):
        pid = service.pid()
        if pid is not None:
            sampler.root(pid, BY_NAME.get(service.name, service.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=68, help="jobs per burst (4 x the corpus)")
    parser.add_argument("--paced-jobs", type=int, default=34, help="jobs per paced run")
    parser.add_argument("--rate", type=float, default=2.0, help="paced jobs/s")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients")
    parser.add_argument("--processes", type=int, default=2, help="worker and limit processes")
    parser.add_argument("--profile", action="store_true", help="py-spy a worker after the rounds")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs here")
    args = parser.parse_args(argv)
    quiet_kafka_logs()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="pixstream-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    with Sampler() as sampler:
        root_services(sampler)
        results = asyncio.run(run(args, sampler, logs))
        report = render(args, results, sampler)
    (logs / "report.md").write_text(report + "\n")
    print(f"\n{report}\n\nlogs and report.md: {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
