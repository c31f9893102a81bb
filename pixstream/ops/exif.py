"""The EXIF subset `analyze` reports: an allow-list of camera facts, never a location.

An allow-list rather than a deny-list, because GPS is not the only tag that locates or
identifies someone (maker notes, serial numbers, owner names, XMP): a tag nobody chose to
publish cannot leak. Values are coerced to plain JSON scalars and bounded, since they are
whatever bytes the camera (or an attacker) wrote.
"""

from __future__ import annotations

from typing import Final

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

#: The Exif sub-IFD, where the exposure tags live (IFD0 holds make, model, orientation).
_EXIF_IFD: Final = 0x8769
_MAX_TEXT: Final = 128

# name -> (tag, in the Exif sub-IFD?)
_TEXT_TAGS: Final = {
    "Make": (0x010F, False),
    "Model": (0x0110, False),
    "LensModel": (0xA434, True),
    "DateTimeOriginal": (0x9003, True),
}
_NUMBER_TAGS: Final = {
    "ExposureTime": (0x829A, True),
    "FNumber": (0x829D, True),
    "FocalLength": (0x920A, True),
}
_ISO: Final = 0x8827  # ISOSpeedRatings (PhotographicSensitivity in EXIF 2.3)
_ORIENTATION: Final = 0x0112


class ExifSubset(BaseModel):
    """The allow-listed EXIF tags of a source, under their EXIF names; absent when unset.

    There is no field for GPS or any other tag: the model cannot carry one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    Make: str | None = Field(default=None, max_length=_MAX_TEXT)
    Model: str | None = Field(default=None, max_length=_MAX_TEXT)
    LensModel: str | None = Field(default=None, max_length=_MAX_TEXT)
    DateTimeOriginal: str | None = Field(
        default=None, max_length=_MAX_TEXT, description="as written: 'YYYY:MM:DD HH:MM:SS'"
    )
    ExposureTime: float | None = Field(default=None, description="seconds")
    FNumber: float | None = None
    ISO: int | None = None
    FocalLength: float | None = Field(default=None, description="millimetres")
    Orientation: int | None = Field(
        default=None, description="as read from the file (1-8); the reported size is upright"
    )


def subset(exif: Image.Exif, *, orientation: int | None = None) -> ExifSubset:
    """The allow-listed tags of `exif`; unreadable values are left out, never guessed.

    `orientation` overrides the tag when the codec knows better (libheif applies the HEIF
    transforms itself and resets the tag to 1; pillow-heif keeps what the file said).
    """
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a broken sub-IFD offset: the IFD0 tags are still worth reporting
        sub = {}
    found: dict[str, object] = {}
    for name, (tag, nested) in _TEXT_TAGS.items():
        if (text := _text((sub if nested else exif).get(tag))) is not None:
            found[name] = text
    for name, (tag, nested) in _NUMBER_TAGS.items():
        if (number := _number((sub if nested else exif).get(tag))) is not None:
            found[name] = number
    if (iso := _integer(sub.get(_ISO))) is not None:
        found["ISO"] = iso
    read = orientation if orientation is not None else _integer(exif.get(_ORIENTATION))
    if read is not None and 1 <= read <= 8:
        found["Orientation"] = read
    return ExifSubset.model_validate(found)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    # Cameras pad with NULs and spaces; control characters have no place in a JSON report.
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned[:_MAX_TEXT] or None


def _number(value: object) -> float | None:
    if isinstance(value, tuple) and value:  # a few writers store a one-element array
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]  # IFDRational, int, float, str
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if number != number or number in (float("inf"), float("-inf")) or number < 0:
        return None
    return round(number, 6)


def _integer(value: object) -> int | None:
    if isinstance(value, tuple) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= 10_000_000 else None
