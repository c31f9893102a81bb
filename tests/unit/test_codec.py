"""Decoding limits, orientation, colour management and metadata stripping, on real pixels."""

from __future__ import annotations

import io

import pytest
from PIL import ExifTags, Image, ImageCms

from pixstream import errors
from pixstream.ops import codec
from tests.unit.conftest import BLUE, RED, Images, pixel

pytestmark = pytest.mark.unit

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n"
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)


def decode(data: bytes, draft: codec.DraftRequest = None) -> codec.Decoded:
    return codec.decode(data, max_pixels=50_000_000, max_frames=100, draft=draft)


def close(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(x - y) <= tolerance for x, y in zip(pixel, expected, strict=True))


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "gif"),
        ("TIFF", "tiff"),
        ("AVIF", "avif"),
    ],
)
def test_sniff_format_recognises_each_input_format(images: Images, fmt: str, expected: str) -> None:
    assert codec.sniff_format(images.encode(images.solid((8, 8)), fmt)[:32]) == expected


@pytest.mark.parametrize("data", [EPS, PDF, b"", b"hello world"])
def test_sniff_format_refuses_non_images(data: bytes) -> None:
    assert codec.sniff_format(data[:32]) is None


@pytest.mark.parametrize("data", [EPS, PDF])
def test_eps_and_pdf_named_jpg_are_unsupported(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedFormat) as info:
        decode(data)
    assert info.value.code == "unsupported_format"


def test_exif_orientation_6_comes_out_upright(images: Images) -> None:
    stored = images.marked((40, 20))  # red block at the stored top-left
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # display = stored rotated 90 degrees clockwise
    decoded = decode(images.encode(stored, "JPEG", exif=exif, quality=95))
    frame = decoded.frames[0]
    assert frame.size == (20, 40)
    assert decoded.full_size == (20, 40)
    assert close(frame.getpixel((18, 1)), RED)  # stored top-left -> displayed top-right
    assert close(frame.getpixel((1, 1)), BLUE)
    assert close(frame.getpixel((1, 38)), BLUE)


def _jpeg_with_private_data(images: Images) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SecretCam"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (2.0, 21.0, 7.0)
    return images.encode(
        images.noise((64, 48)),
        "JPEG",
        exif=exif,
        comment=b"SecretComment",
        xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>SecretXmp</x:xmpmeta>",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "avif"])
def test_no_metadata_reaches_any_output_format(images: Images, fmt: str) -> None:
    source = _jpeg_with_private_data(images)
    reopened = Image.open(io.BytesIO(source))
    assert reopened.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the fixture really has GPS
    assert reopened.info.get("comment") == b"SecretComment"

    decoded = decode(source)
    data = codec.encode(decoded.frames, fmt)
    output = Image.open(io.BytesIO(data))
    assert output.format == fmt.upper()
    assert not output.getexif()
    assert not output.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    for key in ("exif", "comment", "xmp", "XML:com.adobe.xmp", "icc_profile"):
        assert not output.info.get(key), key
    for secret in (b"SecretCam", b"SecretComment", b"SecretXmp", b"GPS", b"Exif\x00\x00"):
        assert secret not in data, secret


def test_cmyk_jpeg_comes_out_rgb_with_the_right_colour(images: Images) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink
    frame = decode(images.encode(cmyk, "JPEG", quality=95)).frames[0]
    assert frame.mode == "RGB"
    assert close(frame.getpixel((8, 8)), RED, tolerance=20)


def test_lab_tiff_with_its_icc_profile_is_converted_to_srgb(images: Images) -> None:
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    colour = (200, 40, 40)
    to_lab = ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    lab_image = ImageCms.applyTransform(Image.new("RGB", (16, 16), colour), to_lab)
    assert lab_image is not None
    assert lab_image.mode == "LAB"
    data = images.encode(lab_image, "TIFF", icc_profile=ImageCms.ImageCmsProfile(lab).tobytes())
    frame = decode(data).frames[0]
    assert frame.mode == "RGB"
    assert close(frame.getpixel((4, 4)), colour, tolerance=4)
    assert "icc_profile" not in frame.info
    assert "icc_profile" not in Image.open(io.BytesIO(codec.encode([frame], "png"))).info


def test_srgb_tagged_image_keeps_its_colours(images: Images) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = images.encode(images.solid((8, 8), (10, 200, 30)), "PNG", icc_profile=icc)
    assert decode(data).frames[0].getpixel((0, 0)) == (10, 200, 30)


def test_transparency_is_kept_as_rgba(images: Images) -> None:
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    frame = decode(images.encode(palette, "PNG", transparency=0)).frames[0]
    assert frame.mode == "RGBA"
    assert pixel(frame, (0, 0))[3] == 0


def test_rgba_to_jpeg_is_flattened_on_white(images: Images) -> None:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    output = Image.open(io.BytesIO(codec.encode([transparent], "jpeg")))
    assert output.mode == "RGB"
    assert close(output.getpixel((4, 4)), (255, 255, 255), tolerance=2)


def test_decompression_bomb_png_is_refused_before_loading(images: Images) -> None:
    bomb = images.png_header_only(30000, 30000)
    assert len(bomb) < 4096
    with pytest.raises(errors.TooManyPixels) as info:
        decode(bomb)
    assert info.value.code == "too_many_pixels"


def test_image_over_our_own_limit_is_refused(images: Images) -> None:
    data = images.png_header_only(2000, 1000)  # far below Pillow's own bomb limits
    with pytest.raises(errors.TooManyPixels, match="2000x1000"):
        codec.decode(data, max_pixels=1_000_000, max_frames=10)


def test_truncated_jpeg_is_corrupt(images: Images) -> None:
    data = images.encode(images.noise((256, 256)), "JPEG", quality=90)
    with pytest.raises(errors.CorruptImage) as info:
        decode(data[: len(data) // 2])
    assert info.value.code == "corrupt_image"


def test_garbage_after_a_valid_signature_is_corrupt_or_unsupported() -> None:
    with pytest.raises((errors.CorruptImage, errors.UnsupportedFormat)):
        decode(b"\xff\xd8\xff\xe0" + b"\x00" * 64)


def test_animated_gif_over_the_frame_limit_is_refused(images: Images) -> None:
    with pytest.raises(errors.TooManyFrames) as info:
        codec.decode(images.animated_gif(5), max_pixels=10**6, max_frames=4)
    assert info.value.code == "too_many_frames"


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_gif_under_the_limit_keeps_every_frame(images: Images, fmt: str) -> None:
    decoded = codec.decode(images.animated_gif(5), max_pixels=10**6, max_frames=5)
    assert decoded.animated
    assert len(decoded.frames) == 5
    assert decoded.durations == [80] * 5
    data = codec.encode(decoded.frames, fmt, durations=decoded.durations, loop=decoded.loop)
    output = Image.open(io.BytesIO(data))
    assert getattr(output, "n_frames", 1) == 5
    output.seek(1)
    assert close(output.convert("RGB").getpixel((5, 5)), (0, 255, 0), tolerance=20)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "avif"])
def test_animation_into_a_still_format_is_refused(images: Images, fmt: str) -> None:
    decoded = decode(images.animated_gif(3))
    with pytest.raises(errors.AnimationNotSupported) as info:
        codec.encode(decoded.frames, fmt)
    assert info.value.code == "animation_not_supported"


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale(images: Images) -> None:
    data = images.encode(images.solid((4000, 3000), (90, 120, 150)), "JPEG")
    full = decode(data)
    drafted = decode(data, draft=(1024, 768))
    assert full.size == (4000, 3000)
    assert drafted.size < (4000, 3000)
    assert drafted.size[0] >= 1024
    assert drafted.size[1] >= 768
    assert drafted.full_size == (4000, 3000)


def test_draft_target_follows_exif_orientation(images: Images) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = images.encode(images.solid((4000, 3000)), "JPEG", exif=exif)
    seen: list[tuple[int, int]] = []

    def target(width: int, height: int) -> tuple[int, int]:
        seen.append((width, height))
        return (768, 1024)  # displayed (portrait) size

    decoded = decode(data, draft=target)
    assert seen == [(3000, 4000)]
    assert decoded.size < (3000, 4000)
    assert decoded.size[0] >= 768
    assert decoded.size[1] >= 1024


def test_encode_defaults_and_options(images: Images) -> None:
    frame = images.noise((32, 32))
    jpeg = Image.open(io.BytesIO(codec.encode([frame], "jpeg")))
    assert jpeg.info.get("progressive") or jpeg.info.get("progression")
    lossless = codec.encode([frame], "webp", lossless=True)
    assert Image.open(io.BytesIO(lossless)).convert("RGB").tobytes() == frame.tobytes()
    with pytest.raises(errors.InvalidParams):
        codec.encode([frame], "bmp")
