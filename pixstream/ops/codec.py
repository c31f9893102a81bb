"""The only place where bytes become images and images become bytes.

Decoding enforces the pixel and frame limits before any pixel is loaded, orients from EXIF and
converts to sRGB; encoding writes pixels only, so no EXIF, GPS, ICC, XMP or comment can leak.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from pixstream import errors

#: Pillow format names we agree to open; everything else (EPS, PDF, PSD, ...) is refused
#: before its plugin can run, which also keeps Ghostscript out of reach.
INPUT_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "AVIF")
OUTPUT_FORMATS: Final = ("jpeg", "png", "webp", "gif", "avif")
ANIMATED_FORMATS: Final = frozenset({"gif", "webp"})
EXTENSIONS: Final = {
    "jpeg": "jpg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
    "tiff": "tiff",
    "avif": "avif",
}

DEFAULT_QUALITY: Final = {"jpeg": 85, "webp": 80, "avif": 60}
DEFAULT_SPEED: Final = 6  # AVIF encoder speed 0 (slowest, best) .. 10 (fastest)
_ORIENTATION_TAG: Final = 0x0112
_SWAPPING_ORIENTATIONS: Final = frozenset({5, 6, 7, 8})
_SRGB: Final = ImageCms.createProfile("sRGB")

DraftRequest = tuple[int, int] | Callable[[int, int], tuple[int, int] | None] | None


@dataclass(frozen=True)
class Decoded:
    """A decoded source: RGB/RGBA frames (one unless animated) and how to replay them."""

    frames: list[Image.Image]
    format: str  # lower-case Pillow format name: jpeg, png, webp, gif, tiff, avif
    durations: list[int]  # per-frame display time in ms (animations only)
    loop: int  # 0: forever
    full_size: tuple[int, int]  # oriented size before any draft reduction

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
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def decode(data: bytes, *, max_pixels: int, max_frames: int, draft: DraftRequest = None) -> Decoded:
    """Decode `data` into normalised frames, refusing what breaks a limit before loading it.

    `draft` is a target size, or a function of the oriented source size returning one: a JPEG
    is then decoded by libjpeg at the smallest 1/2, 1/4 or 1/8 scale still at least that big.
    """
    try:
        im = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError as exc:
        raise errors.UnsupportedFormat() from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.TooManyPixels(str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise errors.CorruptImage(f"the image header cannot be read: {exc}") from exc

    # No `with im:` here: closing would invalidate the frame returned for a still image.
    width, height = im.size
    if width * height > max_pixels:
        raise errors.TooManyPixels(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    try:
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > max_frames:
            raise errors.TooManyFrames(
                f"the image has {n_frames} frames; the limit is {max_frames}"
            )
        return _load(im, (im.format or "").lower(), n_frames, draft)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise errors.TooManyPixels(str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise errors.CorruptImage(f"the image data is corrupt or truncated: {exc}") from exc


def _load(im: ImageFile.ImageFile, fmt: str, n_frames: int, draft: DraftRequest) -> Decoded:
    orientation = im.getexif().get(_ORIENTATION_TAG, 1)
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
    for index in range(n_frames):
        if index:
            im.seek(index)
        im.load()
        durations.append(int(im.info.get("duration", 0)))
        frame = _to_srgb(im if n_frames == 1 else im.copy(), icc)
        ImageOps.exif_transpose(frame, in_place=True)
        # Decoded images carry pixels only: nothing in `info` may reach an encoder.
        frame.info = {}
        frames.append(frame)
    return Decoded(frames=frames, format=fmt, durations=durations, loop=loop, full_size=full)


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
