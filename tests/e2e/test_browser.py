"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright (no
browser download: `make browser` installs the distribution's package), against the real
ingress and a real worker on loopback. The page follows jobs over the event stream."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from PIL import Image
from playwright.async_api import Browser, FilePayload, Page, Route, async_playwright

from pixstream.ingress import create_app
from tests.e2e.conftest import Pipeline
from tests.harness import jpeg_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.s3, pytest.mark.postgres]

#: The distribution's binary itself (/usr/bin/chromium is a shell wrapper around it).
CHROMIUM = os.environ.get("PIXSTREAM_CHROMIUM", "/usr/lib/chromium/chromium")
#: Generous: what may take long is the worker, and a wait is not an assertion about speed.
WAIT_MS = 90_000
SPEC = {
    "steps": [
        {"id": "web", "op": "resize", "params": {"width": 640}},
        {"id": "thumb", "op": "thumbnail", "params": {"size": 96}},
    ]
}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # Root has no user namespace sandbox here; loopback only, so no proxy either.
            args=["--no-sandbox", "--no-proxy-server"],
        )
        yield browser
        await browser.close()


@pytest.fixture
async def base_url(pipeline: Pipeline) -> AsyncIterator[str]:
    server = TestServer(create_app(pipeline.settings), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/")).rstrip("/")
    await server.close()


@pytest.fixture
async def page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        # What the page looked like at the end, kept with the test's files for a failure.
        await page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def upload(page: Page, base_url: str, data: bytes, spec: Any, name: str) -> str:
    """Open the page, choose a file, write the spec and submit; the new job's id."""
    await page.goto(base_url + "/")
    await page.set_input_files(
        "#file", files=FilePayload(name=name, mimeType="image/jpeg", buffer=data)
    )
    await page.fill("#spec", json.dumps(spec) if not isinstance(spec, str) else spec)
    await page.click("#send")
    await page.wait_for_selector("#message:has-text('Accepted')", timeout=WAIT_MS)
    job_id = await page.get_attribute("#jobs .job >> nth=0", "data-job")
    assert job_id
    return job_id


async def test_an_upload_completes_with_a_thumbnail_preview(page: Page, base_url: str) -> None:
    job_id = await upload(page, base_url, jpeg_bytes((1200, 800)), SPEC, "beach.jpg")
    job = page.locator(f'[data-job="{job_id}"]')
    assert await page.locator("#jobs .job").first.get_attribute("data-job") == job_id  # on top
    await job.locator(".badge.completed").wait_for(timeout=WAIT_MS)
    await job.locator(".bar.completed").wait_for()
    preview = job.locator("img.preview")
    await page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=await preview.element_handle()
    )
    natural = await preview.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
    assert natural == [96, 64]  # the thumbnail's size, not the 640 px output's
    assert await preview.get_attribute("loading") == "lazy"
    assert await job.locator("ul.outputs a").count() == 2  # a download per output
    assert "2/2 steps" in await job.inner_text()


async def test_a_failed_job_shows_the_failed_state_and_its_code(page: Page, base_url: str) -> None:
    truncated = jpeg_bytes((1200, 800))[:3000]  # headers intact, pixels missing
    job_id = await upload(page, base_url, truncated, SPEC, "broken.jpg")
    job = page.locator(f'[data-job="{job_id}"]')
    await job.locator(".badge.failed").wait_for(timeout=WAIT_MS)
    await job.locator(".bar.failed").wait_for()
    assert await job.locator(".bar.completed").count() == 0
    assert "corrupt_image" in await job.locator("ul.errors").inner_text()


async def test_a_link_to_an_unknown_job_says_not_found(page: Page, base_url: str) -> None:
    await page.goto(base_url + "/#job=no-such-job-0123")
    job = page.locator('[data-job="no-such-job-0123"]')
    await job.locator(".badge.not-found").wait_for(timeout=WAIT_MS)
    assert "not found" in (await job.locator(".badge").inner_text()).lower()


async def test_a_bad_spec_shows_the_problem_detail(page: Page, base_url: str) -> None:
    await page.goto(base_url + "/")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, "PNG")
    png = FilePayload(name="x.png", mimeType="image/png", buffer=buf.getvalue())
    await page.set_input_files("#file", files=png)
    await page.fill("#spec", json.dumps({"steps": [{"id": "a", "op": "nope", "params": {}}]}))
    await page.click("#send")
    message = page.locator("#message.error")
    await message.wait_for(timeout=WAIT_MS)
    assert "(422)" in await message.inner_text()


async def test_an_analyze_output_shows_its_placeholder_while_the_preview_loads(
    page: Page, base_url: str
) -> None:
    colour = (30, 120, 200)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), colour).save(buf, "PNG")
    spec = {
        "steps": [
            {"id": "info", "op": "analyze", "params": {}},
            {"id": "thumb", "op": "thumbnail", "params": {"size": 96}},
        ]
    }
    # Hold the preview's download back until the placeholder has been seen in its place.
    release = asyncio.Event()

    async def held(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/processed/**", held)
    await page.goto(base_url + "/")
    await page.set_input_files(
        "#file", files=FilePayload(name="blue.png", mimeType="image/png", buffer=buf.getvalue())
    )
    await page.fill("#spec", json.dumps(spec))
    await page.click("#send")
    await page.wait_for_selector("#message:has-text('Accepted')", timeout=WAIT_MS)
    job_id = await page.get_attribute("#jobs .job >> nth=0", "data-job")
    job = page.locator(f'[data-job="{job_id}"]')
    await job.locator(".badge.completed").wait_for(timeout=WAIT_MS)

    frame = job.locator(".preview-frame")
    placeholder = frame.locator("img.placeholder")
    await placeholder.wait_for(state="visible")
    assert await frame.get_attribute("class") == "preview-frame loading"
    assert (await placeholder.get_attribute("src") or "").startswith("data:image/png;base64,")
    # The ThumbHash decoded in the page: its pixels are the image's colour.
    mean = await placeholder.evaluate(
        """(img) => {
            const c = document.createElement("canvas");
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            const sum = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += d[i + k];
            return [img.naturalWidth, img.naturalHeight, ...sum.map((s) => s / (d.length / 4))];
        }"""
    )
    width, height, *rgb = mean
    assert (width, height) == (32, 23)  # a 3:2 image's ThumbHash keeps a 7:5 grid
    assert all(abs(got - want) <= 12 for got, want in zip(rgb, colour, strict=True)), rgb

    release.set()
    await page.wait_for_function(
        "(f) => f.classList.contains('loaded')", arg=await frame.element_handle(), timeout=WAIT_MS
    )
    assert not await placeholder.is_visible()
    assert await frame.locator("img.preview").evaluate("(img) => img.naturalWidth") == 96
