from __future__ import annotations

import pytest
from PIL import Image

from server.engine.conditions import fit_to_size
from server.request.images import ImageError, decode_image
from tests.conftest import png_bytes


def test_fit_covers_then_centre_crops():
    img = Image.new("RGB", (200, 100))
    img.paste((255, 0, 0), (0, 0, 50, 100))  # left quarter red: cropped away when fitting to a square
    img.paste((0, 255, 0), (75, 0, 125, 100))  # centre green: kept
    out = fit_to_size(img, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((32, 32)) == (0, 255, 0)
    assert all(out.getpixel((x, 32))[0] < 128 for x in range(0, 64, 4))  # no red left


def test_fit_upscales_small_images_and_keeps_exact_sizes():
    assert fit_to_size(Image.new("RGB", (10, 30)), 64, 48).size == (64, 48)
    same = Image.new("RGB", (64, 48))
    assert fit_to_size(same, 64, 48) is same


def test_transparency_becomes_black_and_grey_becomes_rgb():
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    assert decode_image(png_bytes(rgba), 10_000).getpixel((0, 0)) == (0, 0, 0)
    grey = Image.new("L", (8, 8), 200)
    assert decode_image(png_bytes(grey), 10_000).getpixel((3, 3)) == (200, 200, 200)


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    with pytest.raises(ImageError, match="more than the 1000 pixels"):
        decode_image(png_bytes(Image.new("RGB", (100, 100))), 1000)


@pytest.mark.parametrize("data", [b"", b"not an image", png_bytes(Image.new("RGB", (4, 4)))[:40]])
def test_unreadable_data_is_a_clear_error(data):
    with pytest.raises(ImageError, match="not a readable"):
        decode_image(data, 10_000)
