"""Robust image loading: every input becomes an 8-bit RGB PIL image or a clear :class:`ImageError`.

Handled: CMYK, RGBA/LA/palette-with-transparency (composited on white, as transformers does), grayscale,
16-bit and 32-bit integer/float grayscale (scaled to 8 bits by the value range the mode allows), EXIF
orientation (applied), 1x1 images, truncated files (error, never silently half-decoded), and huge images (a
decompression-bomb guard with a configurable pixel limit, checked from the header before decoding).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

#: default decompression-bomb guard (pixels); override per call or with VISTUNE_MAX_IMAGE_PIXELS
DEFAULT_MAX_PIXELS = 178_956_970


class ImageError(ValueError):
    """An image could not be used. ``reason`` is a short machine-readable code (for skip counters)."""

    def __init__(self, message: str, *, source: str | None = None, reason: str = "unreadable") -> None:
        super().__init__(f"{source}: {message}" if source else message)
        self.source = source
        self.reason = reason


def max_pixels_default() -> int:
    env = os.environ.get("VISTUNE_MAX_IMAGE_PIXELS")
    return int(env) if env else DEFAULT_MAX_PIXELS


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.int64)
        hi = 65535 if arr.max(initial=0) <= 65535 else int(arr.max())
        arr = np.clip(arr, 0, None).astype(np.float64) * (255.0 / max(hi, 1))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 1.0 if hi <= 1.0 and lo >= 0.0 else (1.0 / (hi - lo) if hi > lo else 0.0)
        arr = (arr - (0.0 if scale == 1.0 else lo)) * scale * 255.0
        return Image.fromarray(np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8), mode="L")
    return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white)."""
    im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def load_image(src: Any, *, max_pixels: int | None = None, source: str | None = None) -> Image.Image:
    """Open ``src`` (path, bytes, file object or PIL image) as RGB, with EXIF orientation applied."""
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    name = source or (str(src) if isinstance(src, str | Path) else None)
    if isinstance(src, Image.Image):
        im = src
    else:
        try:
            if isinstance(src, bytes | bytearray):
                fp: Any = io.BytesIO(src)
            elif isinstance(src, str | Path):
                path = Path(src)
                if not path.is_file():
                    raise ImageError("image file not found", source=name, reason="missing")
                fp = path
            else:
                fp = src
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # our own guard below gives the clearer error
            try:
                im = Image.open(fp)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        except ImageError:
            raise
        except Exception as exc:  # PIL raises many types for undecodable data
            raise ImageError(
                f"cannot decode image ({type(exc).__name__}: {exc})", source=name, reason="corrupt"
            ) from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"image has an empty size {w}x{h}", source=name, reason="corrupt")
    if limit and w * h > limit:
        raise ImageError(
            f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the decompression-bomb guard of {limit / 1e6:.0f} MP "
            "(raise it with max_image_pixels / VISTUNE_MAX_IMAGE_PIXELS if the file is trusted)",
            source=name,
            reason="too_large",
        )
    try:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(
            f"cannot decode image ({type(exc).__name__}: {exc})", source=name, reason="corrupt"
        ) from None
