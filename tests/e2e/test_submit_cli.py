"""`pixstream submit` as a user runs it: the real command in a child process, against the real
ingress (on loopback, in this process) and a real worker."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from PIL import Image

from pixstream.ingress import create_app
from tests.e2e.conftest import Pipeline
from tests.harness import jpeg_bytes, settings_env

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def url(pipeline: Pipeline) -> AsyncIterator[str]:
    server = TestServer(create_app(pipeline.settings), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def pixstream(pipeline: Pipeline, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pixstream",
        *args,
        env=settings_env(pipeline.settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def photos(folder: Path) -> None:
    """Two photos in nested folders, a broken one, and a file that is no image."""
    (folder / "trip" / "day2").mkdir(parents=True)
    (folder / "trip" / "beach.jpg").write_bytes(jpeg_bytes((640, 480)))
    Image.new("RGB", (300, 200), (0, 90, 200)).save(folder / "trip" / "day2" / "sea.png")
    (folder / "trip" / "day2" / "broken.jpg").write_bytes(b"this is not a JPEG at all")
    (folder / "trip" / "notes.txt").write_text("not an image: not submitted")


async def test_a_folder_with_a_bad_file_finishes_the_batch_and_saves_named_outputs(
    pipeline: Pipeline, url: str, tmp_path: Path
) -> None:
    photos(tmp_path)
    out = tmp_path / "results"
    code, stdout, stderr = await pixstream(
        pipeline, "submit", str(tmp_path / "trip"), "--steps", str(REPO / "examples/spec.json"),
        "--out", str(out), "--json", "--url", url, "--concurrency", "2",
    )  # fmt: skip
    assert code == 1, stderr  # one file failed
    assert "Traceback" not in stderr
    results = {Path(r["file"]).name: r for r in json.loads(stdout)}
    assert set(results) == {"beach.jpg", "sea.png", "broken.jpg"}  # notes.txt is no image
    assert results["broken.jpg"]["status"] == "error"
    assert "415" in results["broken.jpg"]["errors"][0]
    for name in ("beach.jpg", "sea.png"):
        assert results[name]["status"] == "completed"
        assert results[name]["job_id"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "beach/thumb.jpg", "beach/webp.webp", "sea/thumb.png", "sea/webp.webp",
    ]  # fmt: skip
    assert Image.open(out / "beach" / "thumb.jpg").size == (256, 192)


async def test_a_failed_job_keeps_the_outputs_of_its_finished_branch(
    pipeline: Pipeline, url: str, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [
        {"id": "thumb", "op": "thumbnail", "params": {"size": 64}},
        {"id": "corner", "op": "crop",
         "params": {"left": 5000, "top": 5000, "width": 10, "height": 10}},
    ]}))  # fmt: skip
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(jpeg_bytes((320, 240)))
    out = tmp_path / "results"
    code, stdout, stderr = await pixstream(
        pipeline, "submit", str(photo), "--steps", str(spec), "--out", str(out), "--url", url
    )
    assert code == 1, stdout + stderr
    assert "failed" in stdout
    assert "corner" in stdout  # the failed step is named
    assert (out / "cat" / "thumb.jpg").is_file()
    assert not (out / "cat" / "corner.jpg").exists()


async def test_a_broken_spec_file_is_one_line(pipeline: Pipeline, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text('{"steps": [')
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg_bytes((64, 64)))
    code, _, stderr = await pixstream(pipeline, "submit", str(photo), "--steps", str(spec))
    assert code != 0
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [stderr.strip()]
    assert "not valid JSON" in stderr


async def test_an_unreachable_ingress_is_one_line(pipeline: Pipeline, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg_bytes((64, 64)))
    code, _, stderr = await pixstream(
        pipeline, "submit", str(photo), "--preset", "web", "--url", f"http://127.0.0.1:{port}"
    )
    assert code != 0
    assert "Traceback" not in stderr
    assert "cannot reach the ingress" in stderr
    assert len(stderr.strip().splitlines()) == 1


async def test_version(pipeline: Pipeline) -> None:
    code, stdout, _ = await pixstream(pipeline, "--version")
    assert code == 0
    assert stdout.startswith("pixstream, version ")
