"""Operations on pixel values: grayscale, blur, sharpen, watermark, and convert (encoding only)."""

from __future__ import annotations

from typing import Literal

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import Field, model_validator

from pixstream.ops.operation import Operation, Params, Quality, Radius


class GrayscaleParams(Params):
    """No parameters."""


def _grayscale(image: Image.Image, p: GrayscaleParams) -> Image.Image:
    # Kept in RGB(A) with R=G=B so every output format and later step sees the usual modes.
    grey = image.convert("L").convert("RGB")
    if image.mode == "RGBA":
        grey.putalpha(image.getchannel("A"))
    return grey


class BlurParams(Params):
    """Gaussian blur."""

    radius: Radius


def _blur(image: Image.Image, p: BlurParams) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(p.radius))


class SharpenParams(Params):
    """Unsharp mask."""

    radius: Radius = 2.0
    percent: int = Field(default=150, ge=0, le=1000, description="strength")
    threshold: int = Field(default=3, ge=0, le=255, description="minimum brightness change")


def _sharpen(image: Image.Image, p: SharpenParams) -> Image.Image:
    return image.filter(ImageFilter.UnsharpMask(p.radius, p.percent, p.threshold))


class ConvertParams(Params):
    """Choose the output encoding; the pixels are unchanged."""

    format: Literal["jpeg", "png", "webp", "avif"]
    quality: Quality | None = Field(
        default=None, description="jpeg 85, webp 80, avif 60 when absent; ignored for png"
    )
    lossless: bool = Field(default=False, description="webp only (png is always lossless)")
    speed: int | None = Field(
        default=None, ge=0, le=10, description="encoder effort, 0 slowest/smallest .. 10 fastest"
    )

    @model_validator(mode="after")
    def _lossless_format(self) -> ConvertParams:
        if self.lossless and self.format in ("jpeg", "avif"):
            raise ValueError(f"lossless is not available for {self.format}; use webp or png")
        return self


def _identity(image: Image.Image, p: ConvertParams) -> Image.Image:
    return image


Position = Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"]


class WatermarkParams(Params):
    """Draw text over the image."""

    text: str = Field(min_length=1, max_length=256)
    position: Position = "bottom-right"
    opacity: float = Field(default=0.5, ge=0, le=1)


def _watermark(image: Image.Image, p: WatermarkParams) -> Image.Image:
    # Text scales with the image so the mark reads the same on a thumbnail and a poster.
    font_size = max(10, min(image.size) // 16)
    font = ImageFont.load_default(size=font_size)
    stroke = max(1, font_size // 15)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), p.text, font=font, stroke_width=stroke)
    x, y = _place(
        image.size, (round(right - left), round(bottom - top)), p.position, margin=font_size // 2
    )
    alpha = round(255 * p.opacity)
    draw.text(
        (x - left, y - top),
        p.text,
        font=font,
        fill=(255, 255, 255, alpha),
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, alpha),
    )
    marked = Image.alpha_composite(image.convert("RGBA"), overlay)
    return marked if image.mode == "RGBA" else marked.convert("RGB")


def _place(
    canvas: tuple[int, int], box: tuple[int, int], position: Position, margin: int
) -> tuple[int, int]:
    (cw, ch), (bw, bh) = canvas, box
    if position == "center":
        return (cw - bw) // 2, (ch - bh) // 2
    vertical, horizontal = position.split("-")
    x = margin if horizontal == "left" else cw - bw - margin
    y = margin if vertical == "top" else ch - bh - margin
    return x, y


GRAYSCALE = Operation(
    "grayscale", "Remove colour (R=G=B).", GrayscaleParams, _grayscale, passthrough=True
)
BLUR = Operation("blur", "Gaussian blur.", BlurParams, _blur)
SHARPEN = Operation("sharpen", "Unsharp mask.", SharpenParams, _sharpen)
CONVERT = Operation(
    "convert",
    "Choose the output format and encoding.",
    ConvertParams,
    _identity,
    passthrough=True,
)
WATERMARK = Operation("watermark", "Draw a text watermark.", WatermarkParams, _watermark)
