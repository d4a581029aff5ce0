"""Safe decoding: every kind of bad input gives a specific reason; odd modes become correct RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mumu.config.data import IngestConfig
from mumu.data.decode import BadInput, decode_image, decode_input

CFG = IngestConfig(min_side=8, max_side=64, max_image_pixels=1_000_000)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims `width`x`height` (CRC fixed): a decompression-bomb header."""
    data = bytearray(encode(Image.new("RGB", (4, 4), (1, 2, 3))))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def reason(data: bytes, cfg: IngestConfig = CFG) -> str:
    with pytest.raises(BadInput) as info:
        decode_image(data, cfg)
    return info.value.reason


def test_bad_bytes_get_specific_reasons():
    assert reason(b"") == "empty file (0 bytes)"
    assert reason(b"this is a text file, not a jpeg\n").startswith("not an image")
    full = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    assert reason(full[: len(full) // 2]).startswith("truncated file")
    jpg = encode(Image.new("RGB", (40, 40), (200, 10, 10)), "JPEG")
    assert reason(jpg[:300]).startswith("truncated file")  # cut inside the header
    assert reason(jpg[: len(jpg) - 20]).startswith("truncated file")  # cut inside the pixel data
    assert reason(encode(Image.new("RGB", (5, 40)))) == "too small: 5x40, shorter side < min_side 8"


def test_decompression_bombs_are_rejected_before_decoding():
    # Over our configured guard (1M px) but under Pillow's own limit: our check on the header.
    assert reason(png_with_header_size(2000, 2000)).startswith("decompression bomb guard: 2000x2000")
    # Over 2x Pillow's Image.MAX_IMAGE_PIXELS: Pillow raises DecompressionBombError in open().
    big = IngestConfig(max_image_pixels=10**12)
    assert reason(png_with_header_size(30000, 30000), big).startswith("decompression bomb")


def test_modes_become_rgb_with_alpha_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(encode(rgba), CFG)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (0, 0, 255) and out.getpixel((5, 5)) == (255, 255, 255)
    half = decode_image(encode(Image.new("LA", (10, 10), (0, 128))), CFG)
    assert abs(half.getpixel((3, 3))[0] - 127) <= 1  # black at alpha 128 over white

    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    out = decode_image(encode(pal), CFG)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (0, 255, 0)

    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(cmyk, "JPEG", quality=100), CFG)
    r, g, b = out.getpixel((5, 5))
    assert r > 240 and g < 15 and b < 15

    arr16 = np.full((10, 10), 65535, np.uint16)
    arr16[0, 0] = 257 * 100
    im16 = Image.fromarray(arr16)  # mode I;16
    out = decode_image(encode(im16), CFG)
    assert out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (100, 100, 100)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes(), quality=100), CFG)
    assert out.size == (20, 40)
    # after rotating 90 degrees clockwise the left stripe is at the top
    assert out.getpixel((10, 2))[0] > 200 and out.getpixel((10, 38))[0] < 50


def test_large_images_are_downscaled_keeping_aspect():
    out = decode_image(encode(Image.new("RGB", (200, 100), (10, 20, 30))), CFG)
    assert out.size == (64, 32) and out.getpixel((30, 15)) == (10, 20, 30)
    same = decode_image(encode(Image.new("RGB", (30, 20), (1, 2, 3))), CFG)
    assert same.size == (30, 20)


def test_32bit_and_float_modes_are_scaled_not_clipped():
    arr = np.zeros((10, 10), np.int32)
    arr[0, 0], arr[1, 1] = 65535, 257 * 50  # "I" holding 16-bit data: scaled by 1/257
    out = decode_image(encode(Image.fromarray(arr, mode="I"), "TIFF"), CFG)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (50, 50, 50)
    small = np.full((10, 10), 200, np.int32)  # "I" within 8-bit range: kept as is
    assert decode_image(encode(Image.fromarray(small, mode="I"), "TIFF"), CFG).getpixel((3, 3)) == (200, 200, 200)
    f = np.full((10, 10), 0.5, np.float32)  # "F" in [0, 1]: scaled to [0, 255]
    assert decode_image(encode(Image.fromarray(f, mode="F"), "TIFF"), CFG).getpixel((3, 3)) == (128, 128, 128)


def rgb_pixels(w: int = 20, h: int = 16) -> Image.Image:
    y, x = np.indices((h, w))
    return Image.fromarray(np.stack([x * 9, y * 11, (x + y) * 5], -1).astype(np.uint8), "RGB")


def test_an_8bit_rgb_png_is_kept_as_is_without_its_text_chunks():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "a camera")
    image = rgb_pixels()
    data = encode(image, pnginfo=info, dpi=(72, 72))
    decoded = decode_input(data, CFG)
    assert decoded.png is not None and b"tEXt" not in decoded.png and b"pHYs" not in decoded.png
    assert decoded.png.startswith(data[:33])  # signature and IHDR copied byte for byte
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(decoded.png))), np.asarray(decoded.image))
    assert np.array_equal(np.asarray(decoded.image), np.asarray(image))


@pytest.mark.parametrize("case", ["jpeg", "rgba", "16bit", "trns", "palette", "grey", "downscaled", "oriented", "icc"])
def test_inputs_whose_pixels_the_decoder_changes_or_might_read_differently_are_re_encoded(case):
    image = rgb_pixels()
    data = {
        "jpeg": lambda: encode(image, "JPEG"),
        "rgba": lambda: encode(image.convert("RGBA")),
        "16bit": lambda: rgb48_png(np.asarray(image).astype(">u2") * 257),
        "trns": lambda: encode(image, transparency=(0, 0, 0)),
        "palette": lambda: encode(image.convert("P")),
        "grey": lambda: encode(image.convert("L")),
        "downscaled": lambda: encode(rgb_pixels(100, 80)),
        "oriented": lambda: encode(image, exif=_orientation(6)),
        "icc": lambda: encode(image, icc_profile=b"\0" * 128),
    }[case]()
    decoded = decode_input(data, CFG)
    assert decoded.png is None
    assert decoded.image.mode == "RGB"


def rgb48_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes none; it reads one as 8-bit "RGB")."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()
