"""Every odd image becomes clean RGB or a clear ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from vistune.data.images import ImageError, load_image


def _bytes(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "im",
    [
        Image.new("CMYK", (7, 5), (10, 20, 30, 40)),
        Image.new("L", (7, 5), 128),
        Image.new("1", (7, 5), 1),
        Image.new("P", (7, 5), 3),
        Image.new("LA", (7, 5), (128, 200)),
        Image.new("I;16", (7, 5), 40000),
        Image.new("I", (7, 5), 70000),
        Image.new("F", (7, 5), 0.5),
        Image.new("RGB", (1, 1), (1, 2, 3)),
    ],
)
def test_modes_become_rgb(im):
    out = load_image(im)
    assert out.mode == "RGB" and out.size == im.size


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(im).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_scaled():
    out = load_image(Image.new("I;16", (2, 2), 65535))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_applied():
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(_bytes(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_truncated_file_is_an_error(tmp_path):
    data = _bytes(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG"
    )
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg.*decode") as ei:
        load_image(p)
    assert ei.value.reason == "corrupt"


def test_missing_and_garbage(tmp_path):
    with pytest.raises(ImageError) as ei:
        load_image(tmp_path / "nope.png")
    assert ei.value.reason == "missing"
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageError) as ei:
        load_image(tmp_path / "junk.png")
    assert ei.value.reason == "corrupt"


def test_decompression_bomb_guard(tmp_path):
    p = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(p)
    with pytest.raises(ImageError, match="decompression-bomb guard") as ei:
        load_image(p, max_pixels=1_000_000)
    assert ei.value.reason == "too_large"
    assert load_image(p, max_pixels=10_000_000).size == (3000, 2000)
