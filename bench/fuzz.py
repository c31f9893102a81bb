"""Fuzz the decode path: mutate seed images made in code and check every outcome is an image
or a PixStream error with a code, never another exception.

    python -m bench.fuzz [--count N | --seconds S] [--seed 1] [--out tests/data/fuzz]

The mutator knows where each format keeps its sizes and lengths (PNG chunks, with their CRC
fixed so the decoder reads on; JPEG marker segments; GIF screen and frame descriptors; TIFF
directory entries; RIFF and ISO-BMFF box sizes) and writes boundary values there, besides
the usual bit flips, splices and truncations. A crasher is saved to --out, named by its hash,
for a regression test (tests/unit/test_fuzz.py replays every file there).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import random
import resource
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, Literal

from PIL import Image, ImageDraw

from pixstream import errors
from pixstream.ops import codec
from pixstream.plan import Plan
from pixstream.render import render
from pixstream.spec import JobSpec, StepSpec

#: The budget the fuzzer decodes under: small, so that a mutated header that declares a big
#: image is refused rather than allocated, and RSS stays comparable between runs.
MAX_PIXELS: Final = 4_000_000
MAX_FRAMES: Final = 20
#: Peak RSS a fuzz process may reach (interpreter, Pillow and its codecs ~ 100 MB, plus a
#: 4 MP budget: the source, one intermediate and an encoder's buffers).
RSS_BOUND_MB: Final = 400
INTERESTING: Final = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                      0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)  # fmt: skip

PLAN: Final = Plan.from_spec(
    JobSpec(
        steps=[
            StepSpec(id="thumb", op="thumbnail", params={"size": 32}),
            StepSpec(id="png", op="convert", params={"format": "png"}, input="thumb"),
        ]
    )
)


def _picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    ImageDraw.Draw(image).rectangle((2, 2, size[0] // 2, size[1] // 2), fill=(200, 30, 30, 128))
    return image


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@cache
def seeds() -> dict[str, bytes]:
    """Small valid files of every input format and their common variants, made now."""
    rgb, rgba = _picture((24, 16)), _picture((24, 16), "RGBA")
    frames = [_picture((16, 12)).rotate(angle) for angle in (0, 90, 180)]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg": _save(rgb, "JPEG", quality=80),
        "jpeg_progressive_exif": _save(rgb, "JPEG", progressive=True, exif=exif),
        "png": _save(rgb, "PNG"),
        "png_rgba": _save(rgba, "PNG"),
        "png_palette": _save(rgb.convert("P"), "PNG", transparency=0),
        "png_16bit": _save(rgb.convert("I;16"), "PNG"),
        "gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "webp": _save(rgb, "WEBP", quality=70),
        "webp_lossless_rgba": _save(rgba, "WEBP", lossless=True),
        "webp_animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "tiff": _save(rgb, "TIFF"),
        "tiff_pages_deflate": _save(
            rgb, "TIFF", save_all=True, append_images=[rgba], compression="tiff_deflate"
        ),
        "tiff_lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
        "avif": _save(rgb, "AVIF", quality=50),
    }


# -- where each format keeps its numbers: (offset, width, byte order) ---------------------------
Order = Literal["little", "big"]
Field = tuple[int, int, Order]


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset of the length field, data length) of each chunk."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append((pos, length))
        pos += 12 + length
    return chunks


def _fields(data: bytes) -> list[Field]:
    try:
        found = _find_fields(data)
    except (struct.error, IndexError):  # already mutated past recognition: bytes only
        return []
    return [f for f in found if f[0] + f[1] <= len(data)]


def _find_fields(data: bytes) -> list[Field]:
    fmt = codec.sniff_format(data[:16])
    found: list[Field] = []
    if fmt == "png":
        for pos, length in _png_chunks(data):
            found.append((pos, 4, "big"))
            found.extend((pos + 8 + i, 4, "big") for i in range(0, min(length, 16), 4))
    elif fmt == "jpeg":
        for pos in range(len(data) - 4):
            if data[pos] == 0xFF and data[pos + 1] not in (0x00, 0xFF, 0xD8, 0xD9):
                found.extend((pos + i, 2, "big") for i in (2, 5, 7))  # length, SOF h and w
    elif fmt == "gif":
        found.extend((off, 2, "little") for off in (6, 8))
        found.extend(
            (pos + i, 2, "little")
            for pos in range(13, len(data) - 10)
            if data[pos] == 0x2C
            for i in (1, 3, 5, 7)
        )
    elif fmt == "tiff":
        order: Order = "little" if data[:2] == b"II" else "big"
        (ifd,) = struct.unpack_from("<I" if order == "little" else ">I", data, 4)
        found.append((4, 4, order))
        if ifd + 2 <= len(data):
            count = int.from_bytes(data[ifd : ifd + 2], order)
            for i in range(min(count, 64)):
                entry = ifd + 2 + 12 * i
                found.extend([(entry + 2, 2, order), (entry + 4, 4, order), (entry + 8, 4, order)])
    elif fmt in ("webp", "avif"):
        order = "little" if fmt == "webp" else "big"  # RIFF, ISO-BMFF
        found.extend((pos, 4, order) for pos in range(0, len(data) - 4, 4))
    return found


def _fix_png_crcs(data: bytearray) -> None:
    for pos, length in _png_chunks(bytes(data)):
        end = pos + 8 + length
        if end + 4 <= len(data):
            struct.pack_into(">I", data, end, zlib.crc32(data[pos + 4 : end]) & 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    """`data` with 1..rounds structure-aware or byte-level mutations."""
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        choice = rng.random()
        fields = _fields(bytes(out))
        if choice < 0.35 and fields:
            pos, width, order = rng.choice(fields)
            value = rng.choice(INTERESTING) + rng.choice((-1, 0, 0, 1))
            out[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, order)
        elif choice < 0.6 and out:
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice < 0.75 and out:
            start = rng.randrange(len(out))
            out[start : start + rng.randint(1, 64)] = rng.randbytes(rng.randint(0, 64))
        elif choice < 0.85 and len(out) > 2:
            start = rng.randrange(len(out))
            piece = out[start : start + rng.randint(1, 256)]
            at = rng.randrange(len(out))
            out[at:at] = piece * rng.randint(1, 4)  # repeated chunks, frames, entries
        else:
            out = out[: rng.randint(1, max(1, len(out) - 1))]
    if codec.sniff_format(bytes(out[:16])) is None and len(out) > 16 and rng.random() < 0.9:
        out[:16] = data[:16]  # a broken signature only tests sniffing: mostly keep it
    if codec.sniff_format(bytes(out[:16])) == "png" and rng.random() < 0.8:
        _fix_png_crcs(out)
    return bytes(out)


# -- one case -----------------------------------------------------------------------------------
#: What the codec used to classify before issue 10; any other cause behind a corrupt_image is
#: an exception that used to escape (a TypeError from a plugin, say): worth a regression file.
_OLD_CLASSIFIED: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@dataclass(frozen=True)
class Outcome:
    """What one input did: `code` ("ok" or a PixStream code), or the foreign exception."""

    code: str
    seconds: float
    crash: BaseException | None = None  # not a PixStream error: a bug to fix
    escaped: str | None = None  # classified now, but a foreign exception underneath


def run_case(data: bytes) -> Outcome:
    """probe() and render() of `data`; anything but an image or a PixStream error is a crash."""
    started = time.perf_counter()
    try:
        # The ingress would refuse what probe() refuses; the worker must answer it anyway.
        with contextlib.suppress(errors.PixStreamError):
            codec.probe(data)
        rendered = render(data, PLAN, max_pixels=MAX_PIXELS, max_frames=MAX_FRAMES)
        code = next(iter(rendered.failures.values())).code if rendered.failures else "ok"
    except errors.PermanentError as exc:
        cause = exc.__cause__
        escaped = None
        if cause is not None and not isinstance(cause, (errors.PixStreamError, *_OLD_CLASSIFIED)):
            escaped = type(cause).__name__
        return Outcome(exc.code, time.perf_counter() - started, escaped=escaped)
    except Exception as exc:  # what the fuzzer is here to find
        return Outcome(type(exc).__name__, time.perf_counter() - started, exc)
    return Outcome(code, time.perf_counter() - started)


@dataclass
class Batch:
    """The outcomes of `count` cases from one RNG seed."""

    codes: Counter[str]
    crashes: list[tuple[bytes, str]]  # (input, repr of the exception)
    escaped: dict[str, list[bytes]]  # cause type -> the first few inputs behind it
    slowest: tuple[float, str]
    peak_rss_mb: float


def run_batch(seed: int, count: int = 0, seconds: float = 0.0, keep: int = 3) -> Batch:
    """Mutate and run cases until `count` are done or `seconds` have passed."""
    rng = random.Random(seed)
    corpus = seeds()
    names = sorted(corpus)
    batch = Batch(Counter(), [], {}, (0.0, ""), 0.0)
    deadline = time.monotonic() + seconds
    done = 0
    while (done < count) if count else (time.monotonic() < deadline):
        name = rng.choice(names)
        data = mutate(corpus[name], rng, rounds=rng.choice((1, 2, 4, 8)))
        outcome = run_case(data)
        done += 1
        batch.codes[outcome.code] += 1
        batch.slowest = max(batch.slowest, (outcome.seconds, name))
        if outcome.crash is not None:
            batch.crashes.append((data, repr(outcome.crash)))
        if outcome.escaped is not None:
            kept = batch.escaped.setdefault(outcome.escaped, [])
            if len(kept) < keep:
                kept.append(data)
    batch.peak_rss_mb = peak_rss_mb()
    return batch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def save(data: bytes, out: Path, prefix: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    fmt = codec.sniff_format(data[:16]) or "bin"
    path = out / f"{prefix}-{hashlib.sha256(data).hexdigest()[:12]}.{fmt}"
    path.write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=0, help="cases to run (0: use --seconds)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("tests/data/fuzz"))
    parser.add_argument(
        "--keep-escaped", action="store_true", help="also save inputs whose classified error "
        "hides a foreign exception (they crashed the codec before issue 10)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    batch = run_batch(args.seed, count=args.count, seconds=args.seconds)
    for data, crash in batch.crashes:
        print(f"CRASH {crash} -> {save(data, args.out, 'crash')}")
    if args.keep_escaped:
        for cause, inputs in batch.escaped.items():
            for data in inputs:
                name = "structerror" if cause == "error" else cause.lower()  # struct.error
                print(f"escaped {cause} -> {save(data, args.out, name)}")
    print(f"cases: {sum(batch.codes.values())} (seed {args.seed}); "
          f"outcomes: {dict(batch.codes.most_common())}")  # fmt: skip
    print(f"classified now, foreign underneath: {sorted(batch.escaped)}")
    print(f"slowest case: {batch.slowest[0] * 1000:.0f} ms ({batch.slowest[1]} seed)")
    print(f"peak RSS: {batch.peak_rss_mb:.0f} MB (bound {RSS_BOUND_MB} MB); "
          f"crashers: {len(batch.crashes)}")  # fmt: skip
    return 1 if batch.crashes or batch.peak_rss_mb > RSS_BOUND_MB else 0


if __name__ == "__main__":
    sys.exit(main())
