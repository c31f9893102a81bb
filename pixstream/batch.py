"""A batch of files through the API, as `pixstream submit` runs it: find the images (folders
recursively, globs), upload a bounded number at once, follow each job's event stream, save
the outputs as `<out>/<input stem>/<step>.<ext>` (those of a failed job's finished branches
too), and report every file's outcome. One file's failure never stops the others; only an
ingress that does not answer does (every other file would fail the same way).
"""

from __future__ import annotations

import asyncio
import glob
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from pixstream.client import Client, ClientError, Unreachable
from pixstream.events import CloudEvent

IMAGE_SUFFIXES: Final = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
#: Event streams followed at once: far below the ingress's subscriber limit, above any
#: sensible upload concurrency, so processing overlaps the uploads still going on.
MAX_FOLLOWED: Final = 64


@dataclass
class Outcome:
    """What became of one input file."""

    file: str
    status: str = "pending"  # submitted | completed | failed | error
    job_id: str | None = None
    errors: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reporter(Protocol):
    """Who shows the batch's progress (the CLI's bars, or nothing)."""

    def created(self, outcome: Outcome) -> None: ...
    def event(self, outcome: Outcome, event: CloudEvent) -> None: ...
    def finished(self, outcome: Outcome) -> None: ...


def discover(args: Iterable[str]) -> tuple[list[Path], list[Outcome]]:
    """The files named by `args` (a folder: its images, recursively; a pattern: its matches),
    each once, in order; and an `error` outcome for each argument that names nothing."""
    found: dict[Path, None] = {}
    missing: list[Outcome] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found.update(dict.fromkeys(_images(path)))
        elif path.is_file():
            found[path] = None
        elif glob.has_magic(arg):
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            files = [m for m in matches if m.is_file()]
            for directory in (m for m in matches if m.is_dir()):
                files += _images(directory)
            if not files:
                missing.append(Outcome(arg, "error", errors=["matches no file"]))
            found.update(dict.fromkeys(files))
        else:
            missing.append(Outcome(arg, "error", errors=["no such file or folder"]))
    return list(found), missing


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def output_folders(files: Sequence[Path]) -> dict[Path, str]:
    """A folder name per input that keeps its name: the stem, `-2`, `-3` ... for repeats."""
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for file in files:
        name, n = file.stem or "image", 1
        while name in taken:
            n += 1
            name = f"{file.stem}-{n}"
        taken.add(name)
        names[file] = name
    return names


async def run_batch(
    client: Client,
    files: Sequence[Path],
    spec: dict[str, Any],
    *,
    concurrency: int,
    wait: bool,
    out: Path | None,
    reporter: Reporter,
    outcomes: list[Outcome],
) -> list[Outcome]:
    """Run every file; `outcomes` is filled as files start, so what was created is known
    even when the batch is interrupted. Unreachable when the ingress stops answering."""
    uploads = asyncio.Semaphore(concurrency)
    follows = asyncio.Semaphore(MAX_FOLLOWED)
    folders = output_folders(files)

    async def one(file: Path, outcome: Outcome) -> None:
        async with uploads:
            try:
                outcome.job_id = await client.submit(file, spec)
            except Unreachable:
                raise
            except (ClientError, OSError) as exc:
                outcome.status, outcome.errors = "error", [str(exc)]
                reporter.finished(outcome)
                return
        outcome.status = "submitted"
        reporter.created(outcome)
        if not wait:
            reporter.finished(outcome)
            return
        async with follows:
            await _follow(client, outcome, reporter, out / folders[file] if out else None)
        reporter.finished(outcome)

    mine = [Outcome(str(f)) for f in files]
    outcomes.extend(mine)
    try:
        async with asyncio.TaskGroup() as group:
            for file, outcome in zip(files, mine, strict=True):
                group.create_task(one(file, outcome))
    except* Unreachable as group_error:
        raise group_error.exceptions[0] from None
    return outcomes


async def _follow(client: Client, outcome: Outcome, reporter: Reporter, out: Path | None) -> None:
    assert outcome.job_id is not None
    try:
        async for event in client.events(outcome.job_id):
            reporter.event(outcome, event)
        job = await client.job(outcome.job_id)
    except Unreachable:
        raise
    except ClientError as exc:
        outcome.status, outcome.errors = "error", [str(exc)]
        return
    outcome.status = str(job["status"])
    outcome.errors = [
        f"{'step ' + e['step'] + ': ' if e.get('step') else ''}{e['code']}: {e['message']}"
        for e in job.get("errors", [])
    ]
    if out is not None:
        # Every output that exists, a failed job's finished branches included.
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
        for step, output in job.get("outputs", {}).items():
            outcome.outputs.append(str(await _save(client, step, output, out)))


async def _save(client: Client, step: str, output: dict[str, Any], folder: Path) -> Path:
    if output.get("kind") == "metadata" or not output.get("url"):
        target = folder / f"{step}.json"
        text = json.dumps(output.get("data", output), indent=2)
        await asyncio.to_thread(target.write_text, text)
        return target
    target = folder / f"{step}{Path(output['key']).suffix}"
    await client.download(output["url"], target)
    return target
