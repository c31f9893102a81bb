"""`pixstream submit` on a folder of photos, end to end, timed.

    python -m bench.submit CORPUS_DIR [--photos 50] [--concurrency 8]

Starts a real `pixstream ingress` and `pixstream worker --processes 2` (a database and topics
of their own, render-once off so every copy of a corpus photo is rendered), fills a folder
with `--photos` photos taken in turn from the corpus, and runs
`pixstream submit FOLDER --steps examples/spec.json --concurrency N --out OUT --json` against
it. Prints the wall time and checks the summary: every file completed, every output saved
under OUT/<file stem>/ and decodable. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bench.isolated import free_port, isolated, machine_line, start, stop, wait_http
from pixstream.plan import Plan
from pixstream.spec import JobSpec
from tests.harness import settings_env

SPEC = Path(__file__).resolve().parent.parent / "examples" / "spec.json"


def _outputs_per_job() -> int:
    """The files one job of SPEC leaves: its steps that no other step reads."""
    spec = JobSpec.model_validate(json.loads(SPEC.read_text()))
    return len(Plan.from_spec(spec).outputs)


def _fill(corpus: Path, folder: Path, photos: int) -> None:
    sources = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    if not sources:
        raise SystemExit(f"no photos under {corpus} (make corpus)")
    for i in range(photos):
        source = sources[i % len(sources)]
        shutil.copy(source, folder / f"{i:03d}-{source.name}")


@dataclass
class Result:
    photos: int
    concurrency: int
    exit: int
    wall_s: float
    completed: int
    saved: int
    decodable: int
    folders: int
    stderr: str


def _decodable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except OSError:
        return False
    return True


async def run(corpus: Path, photos: int, concurrency: int) -> Result:
    # Render once off: every copy of a corpus photo is rendered.
    async with isolated(http_host="127.0.0.1", http_port=free_port(), reuse="off") as settings:
        work = Path(tempfile.mkdtemp(prefix="pixstream-bench-submit-"))
        folder, out = work / "photos", work / "out"
        folder.mkdir()
        _fill(corpus, folder, photos)
        procs = [start(settings, "ingress"), start(settings, "worker", "--processes", "2")]
        url = f"http://127.0.0.1:{settings.http_port}"
        try:
            await wait_http(url, procs[0])
            await asyncio.sleep(15)  # the workers join their group (not part of the figure)
            argv = [
                sys.executable, "-m", "pixstream", "submit", str(folder), "--steps", str(SPEC),
                "--concurrency", str(concurrency), "--out", str(out), "--json", "--url", url,
            ]  # fmt: skip
            started = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run,
                argv,
                env=settings_env(settings),
                capture_output=True,
                text=True,
                timeout=900,
            )
            wall = time.perf_counter() - started
            outcomes = json.loads(done.stdout) if done.stdout.strip() else []
            saved = [p for p in out.rglob("*") if p.is_file()]
            return Result(
                photos=photos,
                concurrency=concurrency,
                exit=done.returncode,
                wall_s=wall,
                completed=sum(o["status"] == "completed" for o in outcomes),
                saved=len(saved),
                decodable=sum(_decodable(p) for p in saved),
                folders=len({p.parent.name for p in saved}),
                stderr=done.stderr[-2000:],
            )
        finally:
            await asyncio.to_thread(stop, *procs)
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    r = asyncio.run(run(args.corpus, args.photos, args.concurrency))
    print(machine_line())
    print("| photos | --concurrency | wall time | jobs/s | completed | outputs saved"
          " (decodable) | folders | exit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {r.photos} | {r.concurrency} | {r.wall_s:.1f} s | {r.photos / r.wall_s:.2f}"
        f" | {r.completed} | {r.saved} ({r.decodable}) | {r.folders} | {r.exit} |"
    )
    ok = (
        r.exit == 0
        and r.completed == r.photos
        and r.saved == r.decodable == r.photos * _outputs_per_job()
        and r.folders == r.photos
    )
    if not ok:
        print(r.stderr, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
