"""The only place where bytes become images and images become bytes.

Decoding enforces the pixel and frame limits before any pixel is loaded (after every `seek()`,
and summed over the frames), orients from EXIF and converts to sRGB; encoding writes pixels
only, so no EXIF, GPS, ICC, XMP or comment can leak. Whatever a codec raises that is not ours
becomes `CorruptImage`: a decoder's TypeError says the file is bad, not that PixStream is.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import pillow_heif
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from pixstream import errors
from pixstream.ops import exif as exif_subset

#: Pillow format names we agree to open; everything else (EPS, PDF, PSD, ...) is refused
#: before its plugin can run, which also keeps Ghostscript out of reach.
INPUT_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "AVIF", "HEIF")
OUTPUT_FORMATS: Final = ("jpeg", "png", "webp", "gif", "avif")
ANIMATED_FORMATS: Final = frozenset({"gif", "webp"})
EXTENSIONS: Final = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "tiff": "tiff",
    "avif": "avif",
    "heif": "heic",
}
#: Formats whose frames (TIFF pages, HEIF top-level images) each have their own size.
_PAGED_FORMATS: Final = frozenset({"tiff", "heif"})
#: ISO-BMFF major brands of HEIF stills and sequences (those pillow-heif opens), and AVIF's.
_HEIF_BRANDS: Final = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})

DEFAULT_QUALITY: Final = {"jpeg": 85, "webp": 80, "avif": 60}
DEFAULT_SPEED: Final = 6  # AVIF encoder speed 0 (slowest, best) .. 10 (fastest)
_ORIENTATION_TAG: Final = 0x0112
_SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})
_SRGB: Final = ImageCms.createProfile("sRGB")

DraftRequest = tuple[int, int] | Callable[[int, int], tuple[int, int] | None] | None

# Pillow checks sizes itself inside open() and seek() (a GIF frame can grow the canvas, or ask
# for a disposal buffer, before its size reaches us) but between 1x and 2x MAX_IMAGE_PIXELS it
# only warns, and a warning is no refusal. Made an error once for the process, because
# warnings.catch_warnings() is not thread-safe and render() runs in threads.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# HEIC/HEIF through libheif, registered once for the process (the render pool's children
# import this module too). Thumbnails, depth maps and auxiliary images are never used, so
# they are not read; one decode thread, because every render slot already has a core.
pillow_heif.register_heif_opener(
    thumbnails=False, depth_images=False, aux_images=False, decode_threads=1
)


@dataclass(frozen=True)
class Decoded:
    """A decoded source: RGB/RGBA frames (one unless animated) and how to replay them."""

    frames: list[Image.Image]
    format: str  # lower-case Pillow format name: jpeg, png, webp, gif, tiff, avif, heif
    durations: list[int]  # per-frame display time in ms (animations only)
    loop: int  # 0: forever
    full_size: tuple[int, int]  # oriented size before any draft reduction
    exif: exif_subset.ExifSubset | None = None  # the allow-listed tags, when asked for

    @property
    def animated(self) -> bool:
        return len(self.frames) > 1

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


def sniff_format(head: bytes) -> str | None:
    """The image format named by the magic bytes at the start of a file, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    return None


def _sniff_ftyp(head: bytes) -> str | None:
    """AVIF or HEIF, by the ftyp box's major brand (and its compatible brands for `mif1`,
    the generic brand both may use)."""
    major = head[8:12]
    if major in _AVIF_BRANDS:
        return "avif"
    if major not in _HEIF_BRANDS:
        return None
    if major in (b"mif1", b"msf1"):
        end = min(len(head), int.from_bytes(head[0:4], "big"))
        compatible = {head[i : i + 4] for i in range(16, end - 3, 4)}
        if compatible & _AVIF_BRANDS:
            return "avif"
    return "heif"


@dataclass(frozen=True)
class Probe:
    """What a file's headers say, read without decoding any pixel."""

    format: str
    width: int  # oriented (EXIF orientation 5-8 swaps the sides)
    height: int
    frames: int
    pixels: int  # summed over the frames, at the canvas size each is decoded at


def probe(data: bytes) -> Probe:
    """The format, oriented size, frame count and total pixels of `data`, from headers only.

    Cheap enough for the ingress (no pixel is decoded: GIF frame descriptors and TIFF page
    directories are walked); decode() checks every frame again, so a lie here costs nothing.
    """
    with _classified("the image header cannot be read"):
        im = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        fmt = (im.format or "").lower()
        width, height = im.size
        frames = getattr(im, "n_frames", 1)
        pixels = frames * width * height
        if fmt == "gif":
            pixels = max(pixels, _gif_canvas_pixels(data))
        elif fmt in _PAGED_FORMATS and frames > 1:
            pixels = 0
            for index in range(frames):  # each page has its own size; seek reads only the IFD
                im.seek(index)
                pixels += im.width * im.height
        if im.getexif().get(_ORIENTATION_TAG, 1) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return Probe(fmt, width, height, frames, pixels)


def _gif_canvas_pixels(data: bytes) -> int:
    """The sum over a GIF's frames of its canvas, which a frame reaching past it grows."""
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    total = 0
    try:
        while pos < len(data) and data[pos] != 0x3B:  # ';' ends the stream
            kind, pos = data[pos], pos + 1
            if kind == 0x21:  # extension: a label, then data sub-blocks
                pos = _skip_sub_blocks(data, pos + 1)
            elif kind == 0x2C:  # image descriptor, optional local palette, LZW size, data
                x, y, w, h, local = struct.unpack_from("<HHHHB", data, pos)
                pos += 9 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
                pos = _skip_sub_blocks(data, pos)
                width, height = max(width, x + w), max(height, y + h)
                total += width * height
            # any other byte is skipped, as Pillow's reader does
    except (struct.error, IndexError):
        pass  # truncated: what was read so far is what a decoder could reach
    return total


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while (size := data[pos]) != 0:
        pos += size + 1
    return pos + 1


def decode(
    data: bytes,
    *,
    max_pixels: int,
    max_frames: int,
    draft: DraftRequest = None,
    read_exif: bool = False,
) -> Decoded:
    """Decode `data` into normalised frames, refusing what breaks a limit before loading it.

    `max_pixels` bounds every frame and the sum over all frames (an animation's decoded frames
    are all held at once). `draft` is a target size, or a function of the oriented source size
    returning one: a JPEG is then decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale
    still at least that big. `read_exif` keeps the allow-listed EXIF subset (ops/exif.py),
    read before orientation is applied (which drops the tag).

    MemoryError is not classified: it says the renderer is short of memory, not that the data
    is bad (the render pool answers it with RendererCrashed).
    """
    _allow_pillow(max_pixels)
    with _classified("the image header cannot be read"):
        im = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    # No `with im:` here: closing would invalidate the frame returned for a still image.
    with _classified("the image data is corrupt or truncated"):
        width, height = im.size
        if width * height > max_pixels:
            raise errors.TooManyPixels(
                f"the image is {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}"
            )
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > max_frames:
            raise errors.TooManyFrames(
                f"the image has {n_frames} frames; the limit is {max_frames}"
            )
        fmt = (im.format or "").lower()
        # Every frame of these is at least the first one's canvas: refuse before decoding any.
        if fmt not in _PAGED_FORMATS and n_frames * width * height > max_pixels:
            raise errors.TooManyPixels(_animation_message(n_frames, width, height, max_pixels))
        return _load(im, fmt, n_frames, draft, max_pixels, read_exif=read_exif)


def _animation_message(n_frames: int, width: int, height: int, max_pixels: int) -> str:
    return (
        f"the {n_frames} frames of {width}x{height} add up to {n_frames * width * height} "
        f"pixels; the limit for all frames together is {max_pixels}"
    )


def _allow_pillow(max_pixels: int) -> None:
    # Pillow's process-wide ceiling stays at its default (about 89 MP) unless a caller's budget
    # is larger; it only ever goes up, so no thread can see it below its own budget.
    ceiling = Image.MAX_IMAGE_PIXELS
    if ceiling is not None and max_pixels > ceiling:
        Image.MAX_IMAGE_PIXELS = max_pixels


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Map whatever a codec raises to a PixStream error; ours and MemoryError pass through."""
    try:
        yield
    except (errors.PixStreamError, MemoryError):
        raise
    except UnidentifiedImageError as exc:
        raise errors.UnsupportedFormat() from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.TooManyPixels(str(exc)) from exc
    except Exception as exc:  # TypeError, IndexError, struct.error, EOFError... from plugins
        detail = str(exc) or type(exc).__name__
        raise errors.CorruptImage(f"{what}: {detail}") from exc


def _load(
    im: ImageFile.ImageFile,
    fmt: str,
    n_frames: int,
    draft: DraftRequest,
    max_pixels: int,
    *,
    read_exif: bool,
) -> Decoded:
    exif = im.getexif()
    orientation = exif.get(_ORIENTATION_TAG, 1)
    # libheif applies a HEIF's own rotation and mirroring (so `im.size` is upright already)
    # and pillow-heif resets the tag to 1, keeping what the file said here.
    as_read = im.info.get("original_orientation") if fmt == "heif" else None
    kept = exif_subset.subset(exif, orientation=as_read) if read_exif else None
    swap = orientation in _SWAPPING_ORIENTATIONS
    full = (im.height, im.width) if swap else im.size
    if n_frames == 1 and fmt == "jpeg" and draft is not None:
        target = draft(*full) if callable(draft) else draft
        if target is not None:
            # The target is in display orientation; libjpeg scales the stored one.
            im.draft("RGB", (target[1], target[0]) if swap else target)
    icc = im.info.get("icc_profile")
    loop = int(im.info.get("loop", 0))
    frames: list[Image.Image] = []
    durations: list[int] = []
    total = 0
    for index in range(n_frames):
        if index:
            im.seek(index)
        # A TIFF page or a GIF frame descriptor sets its own size: check it before loading.
        width, height = im.size
        total += width * height
        if width * height > max_pixels:
            raise errors.TooManyPixels(
                f"frame {index + 1} is {width}x{height} = {width * height} pixels; "
                f"the limit is {max_pixels}"
            )
        if total > max_pixels:
            raise errors.TooManyPixels(
                f"frames 1 to {index + 1} add up to {total} pixels; "
                f"the limit for all frames together is {max_pixels}"
            )
        im.load()
        durations.append(int(im.info.get("duration", 0)))
        frame = _to_srgb(im if n_frames == 1 else im.copy(), icc)
        ImageOps.exif_transpose(frame, in_place=True)
        # Decoded images carry pixels only: nothing in `info` may reach an encoder.
        frame.info = {}
        frames.append(frame)
    return Decoded(
        frames=frames, format=fmt, durations=durations, loop=loop, full_size=full, exif=kept
    )


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert to sRGB RGB or RGBA, keeping alpha and dropping the embedded profile."""
    alpha = _alpha_of(im)
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grey: scale to 8 bits instead of letting convert() clip at 255.
        im = im.convert("I").point(lambda v: v / 256).convert("L")
    if (icc and not _is_srgb(icc)) or im.mode == "LAB":
        converted = _apply_profile(im, icc)
        if converted is not None:
            return _with_alpha(converted, alpha)
    if alpha is not None:
        return im if im.mode == "RGBA" else im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _alpha_of(im: Image.Image) -> Image.Image | None:
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        return im.convert("RGBA").getchannel("A")
    return None


def _with_alpha(rgb: Image.Image, alpha: Image.Image | None) -> Image.Image:
    if alpha is None:
        return rgb
    rgba = rgb.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def _is_srgb(icc: bytes) -> bool:
    # Most photos embed an sRGB profile; converting sRGB to sRGB only costs time.
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return True  # unreadable: treated as absent (see _apply_profile)
    description = ImageCms.getProfileDescription(profile) or ""
    return "srgb" in description.lower()


def _apply_profile(im: Image.Image, icc: bytes | None) -> Image.Image | None:
    """The image converted to sRGB through its profile, or None when the profile is unusable."""
    if im.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "LAB", "P", "PA"):
        return None
    if im.mode in ("RGBA", "LA", "PA", "P"):
        im = im.convert("L" if im.mode == "LA" else "RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc) if icc else ImageCms.createProfile("LAB"))
        converted = ImageCms.profileToProfile(im, source, _SRGB, outputMode="RGB")
    except (OSError, ImageCms.PyCMSError):
        # A broken or mismatched profile: the pixels are still an image, shown as if sRGB.
        return None
    assert converted is not None  # inPlace=False always returns an image
    return converted


def encode(
    frames: Sequence[Image.Image],
    fmt: str,
    *,
    quality: int | None = None,
    lossless: bool = False,
    speed: int | None = None,
    durations: Sequence[int] | None = None,
    loop: int = 0,
) -> bytes:
    """Encode frames as `fmt` from their pixels alone (no metadata of any kind)."""
    if fmt not in OUTPUT_FORMATS:
        raise errors.InvalidParams(f"cannot encode {fmt!r}; formats: {', '.join(OUTPUT_FORMATS)}")
    if len(frames) > 1 and fmt not in ANIMATED_FORMATS:
        raise errors.AnimationNotSupported(
            f"the source is animated ({len(frames)} frames) and {fmt} cannot hold an "
            "animation; convert to gif or webp"
        )
    with _classified(f"the image cannot be encoded as {fmt}"):
        clean = [_pixels_only(frame) for frame in frames]
        options: dict[str, Any] = _options(fmt, quality, lossless, speed)
        if fmt == "jpeg":
            clean = [_flatten(frame) for frame in clean]
        if len(clean) > 1:
            options.update(
                save_all=True,
                append_images=clean[1:],
                duration=list(durations) if durations else 100,
                loop=loop,
            )
        out = io.BytesIO()
        clean[0].save(out, format=fmt.upper(), **options)
        return out.getvalue()


def _options(fmt: str, quality: int | None, lossless: bool, speed: int | None) -> dict[str, Any]:
    if fmt == "jpeg":
        return {"quality": quality or 85, "optimize": True, "progressive": True}
    if fmt == "png":
        return {"optimize": False, "compress_level": 6}
    if fmt == "webp":
        # `speed` follows the AVIF scale (higher is faster); WebP's `method` runs the other way.
        method = 4 if speed is None else 6 - round(speed * 6 / 10)
        return {"quality": quality or 80, "method": method, "lossless": lossless}
    if fmt == "avif":
        return {"quality": quality or 60, "speed": DEFAULT_SPEED if speed is None else speed}
    return {"optimize": False}  # gif


def _pixels_only(frame: Image.Image) -> Image.Image:
    # Decoded frames already have empty `info`; this guards images built elsewhere, since some
    # encoders (PNG, AVIF, JPEG comments) read metadata from `info` when not told otherwise.
    if not frame.info:
        return frame
    copy = frame.copy()
    copy.info = {}
    return copy


def _flatten(frame: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite on white rather than let transparent pixels turn black."""
    if frame.mode != "RGBA":
        return frame if frame.mode in ("RGB", "L") else frame.convert("RGB")
    background = Image.new("RGB", frame.size, (255, 255, 255))
    background.paste(frame, mask=frame.getchannel("A"))
    return background
