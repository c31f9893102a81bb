"""`pixstream submit`'s work behind the command's options: read the spec, run the batch with
live bars (or quietly for `--json`), print the summary, and say how it ended in one exit code.
Every failure it can foresee is one line (`SubmitFailed`), never a traceback."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console

from pixstream.batch import Outcome, Reporter, discover, run_batch
from pixstream.client import Client, Unreachable
from pixstream.progressbars import Bars, Quiet, summary


class SubmitFailed(Exception):
    """The batch could not run at all; the message says why, in one line."""


def load_spec(spec_file: Path | None, preset: str | None) -> dict[str, Any]:
    """The job spec of `--steps FILE` or `--preset NAME` (exactly one of them)."""
    if (spec_file is None) == (preset is None):
        raise SubmitFailed("give --steps SPEC.json or --preset NAME")
    if preset is not None:
        return {"preset": preset}
    assert spec_file is not None
    try:
        spec = json.loads(spec_file.read_text())
    except OSError as exc:
        raise SubmitFailed(f"cannot read {spec_file}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SubmitFailed(f"{spec_file} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise SubmitFailed(f'{spec_file}: a job spec is a JSON object ({{"steps": [...]}})')
    return spec


def run(
    url: str,
    args: tuple[str, ...],
    spec: dict[str, Any],
    *,
    concurrency: int,
    wait: bool,
    out: Path | None,
    json_output: bool,
    api_key: str | None,
) -> int:
    """Run the batch; the exit code: 0 when every file's job was created (and, when
    followed, completed), 1 otherwise."""
    console = Console(stderr=json_output, highlight=False)
    files, outcomes = discover(args)
    for missing in outcomes:
        console.print(f"{missing.file}: error: {missing.errors[0]}")
    if not files:
        raise SubmitFailed("no image files to submit")
    try:
        asyncio.run(_batch(url, files, spec, concurrency, wait, out, json_output, api_key,
                           console, outcomes))  # fmt: skip
    except (KeyboardInterrupt, Unreachable) as exc:
        # Either way the batch stopped part way: the jobs it created run on the server.
        created = [o for o in outcomes if o.job_id]
        if isinstance(exc, KeyboardInterrupt):
            console.print(
                f"interrupted: {len(created)} job(s) created keep running on the server; "
                "follow one with GET /v1/jobs/<id> or GET /v1/jobs/<id>/events"
            )
        elif created:
            console.print(f"created before the ingress stopped answering: {len(created)} job(s)")
        for o in created:
            console.print(f"  {o.file}: {o.job_id}")
        if isinstance(exc, Unreachable):
            raise SubmitFailed(str(exc)) from None
        return 130
    if json_output:
        sys.stdout.write(json.dumps([o.as_dict() for o in outcomes], indent=2) + "\n")
    else:
        console.print(summary(outcomes))
    ok = {"completed"} if wait else {"submitted", "completed"}
    return 0 if all(o.status in ok for o in outcomes) else 1


async def _batch(
    url: str,
    files: list[Path],
    spec: dict[str, Any],
    concurrency: int,
    wait: bool,
    out: Path | None,
    json_output: bool,
    api_key: str | None,
    console: Console,
    outcomes: list[Outcome],
) -> None:
    shown: AbstractContextManager[Reporter] = (
        nullcontext(Quiet()) if json_output else Bars(console, len(files))
    )
    async with Client(url, api_key=api_key) as client:
        with shown as reporter:
            await run_batch(client, files, spec, concurrency=concurrency, wait=wait, out=out,
                            reporter=reporter, outcomes=outcomes)  # fmt: skip
