"""Safe decoding of untrusted image bytes into an RGB `PIL.Image`.

Every failure raises `BadInput(reason)` with a short, specific reason that ends up in the quarantine
file; nothing here raises anything else for bad *data* (config errors are the caller's business).

Order of checks, cheapest first, so a hostile file costs as little as possible:
size of the file → header (format + dimensions, without decoding pixels) → pixel-count guard →
`verify()` (structure/CRC checks) → full load → EXIF orientation → mode → RGB → size limits.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from mumu.config.data import IngestConfig


class BadInput(Exception):
    """An input that cannot become a sample. `reason` is short and goes into the quarantine record."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadInput(f"decompression bomb ({str(exc).split(', could be')[0]})") from None
    except UnidentifiedImageError:
        raise BadInput("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow raises these for broken headers
        if "truncated" in str(exc).lower() or isinstance(exc, EOFError):
            raise BadInput(f"truncated file ({exc})") from None
        raise BadInput(f"unreadable header ({type(exc).__name__}: {exc})") from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Integer/float modes ("I;16*", "I", "F") → "L" by scaling 16-bit ranges down, not clipping them."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if hi <= 1.0 else (1.0 if hi <= 255 else 255.0 / 65535.0)
        out = np.clip(np.rint(arr * scale), 0, 255)
    else:
        arr = arr.astype(np.int64)
        # 16-bit data (the "I;16" modes, or "I" holding a 16-bit PNG) is scaled; 8-bit-range "I" is kept.
        if im.mode.startswith("I;16") or (arr.size and arr.max() > 255):
            out = np.clip(arr, 0, 65535) // 257
        else:
            out = np.clip(arr, 0, 255)
    return Image.fromarray(out.astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → "RGB"; transparent pixels are composited on white (the segment background)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")  # CMYK, L, 1, YCbCr, LAB, HSV
    return im


def fit_max_side(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the longer side is `max_side`, keeping the aspect ratio; smaller images unchanged."""
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    s = max_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return im.resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, within the configured limits
    # The input itself as a PNG of exactly `image`'s pixels, when it is one (see `png_as_is`): written as the
    # sample's target without decoding and re-encoding the same pixels.
    png: bytes | None = None


def decode_image(data: bytes, cfg: IngestConfig) -> Image.Image:
    """Decode `data` to an RGB image within the configured limits, or raise BadInput."""
    return decode_input(data, cfg).image


def decode_input(data: bytes, cfg: IngestConfig) -> Decoded:
    """`decode_image`, plus the input's PNG bytes when they already hold exactly the decoded pixels."""
    if len(data) == 0:
        raise BadInput("empty file (0 bytes)")
    if len(data) < cfg.min_file_bytes:
        raise BadInput(f"file too small ({len(data)} bytes < {cfg.min_file_bytes})")
    # A truncated file must be an error, never silently padded with grey: other code in the process
    # could have flipped Pillow's global, so refuse to run rather than produce corrupt samples.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would pass as images")
    im = _open(data)
    w, h = im.size
    # Our own guard (configurable, per call, thread-safe) on the header's dimensions, before any pixel
    # is decoded. Pillow's global Image.MAX_IMAGE_PIXELS check in Image.open stays as a second line
    # (DecompressionBombError above 2x its limit, caught above). Its DecompressionBombWarning (between
    # 1x and 2x) is left alone: turning warnings into errors needs warnings.catch_warnings, which is
    # process-global and races between threads; our guard already decides what is too large.
    if w <= 0 or h <= 0:
        raise BadInput(f"invalid dimensions {w}x{h}")
    if w * h > cfg.max_image_pixels:
        raise BadInput(f"decompression bomb guard: {w}x{h} = {w * h} pixels > {cfg.max_image_pixels}")
    try:
        im.verify()  # structure and checksums; leaves `im` unusable, so reopen
        im = _open(data)
        im.load()
        file_format = im.format
        oriented = im.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)  # what exif_transpose turns
        if oriented:  # else it would only copy the pixels (with the GIL held, beside the models' thread)
            im = ImageOps.exif_transpose(im)
    except BadInput:
        raise
    except Image.DecompressionBombError:
        raise BadInput(f"decompression bomb ({w}x{h})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise BadInput(f"truncated file ({msg})") from None
        raise BadInput(f"corrupt image ({type(exc).__name__}: {msg})") from None
    rgb = to_rgb(im)
    w, h = rgb.size
    if min(w, h) < cfg.min_side:
        raise BadInput(f"too small: {w}x{h}, shorter side < min_side {cfg.min_side}")
    out = fit_max_side(rgb, cfg.max_side)
    # to_rgb and fit_max_side return their input when they change nothing.
    unchanged = file_format == "PNG" and not oriented and rgb is im and out is rgb
    return Decoded(out, png_as_is(data, out.size) if unchanged else None)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change no decoded pixel and that Pillow's re-encoding would not keep either: text, time and
# resolution, dropped. Anything else (tRNS, PLTE, colour profiles, eXIf, APNG frames, unknown chunks) keeps
# the input on the re-encoding path.
_DROPPABLE = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"}


def png_as_is(data: bytes, size: tuple[int, int]) -> bytes | None:
    """`data` cut to its IHDR, IDAT and IEND chunks (copied byte for byte, CRCs included) when it is an 8-bit RGB
    PNG of `size` with nothing else that matters for its pixels, else None. Run only on data Pillow has decoded
    (and verified), so the IDAT stream is known good."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    kept, pos = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return None
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[pos + 8:pos + 18])
            if (width, height) != size or depth != 8 or colour != 2:  # 2 = truecolour, no alpha
                return None
        elif kind not in (b"IDAT", b"IEND") and kind not in _DROPPABLE:
            return None
        if kind not in _DROPPABLE:
            kept.append(data[pos:end])
        if kind == b"IEND":
            return b"".join(kept)
        pos = end
    return None
