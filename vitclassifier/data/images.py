"""Safe image decoding: any file, any mode, upright, as 8-bit RGB.

Used everywhere an image is read (training, validation, prediction), so a phone photo,
a 16-bit PNG or a transparent logo look the same to the model wherever they appear.
Failures raise OSError/ValueError/DecompressionBombError with a readable reason;
callers decide whether to skip the file or report it.

No file costs memory out of proportion: only regular files are opened (a named pipe would block
for ever, /dev/zero never ends), at most ``pixel_budget()`` pixels are decoded (JPEGs above it are
decoded at 1/2, 1/4 or 1/8 scale, JPEG 2000 at a reduced level; other formats are refused), and
the conversions after decoding work on strips of rows, so no full-size float copy is ever made.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from vitclassifier.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# The most pixels decoded from one file (8000 x 8000), far more than a 32-384 px model needs; at
# 4 bytes a pixel the decoded picture and its RGB copy stay within about 600 MB (README: Safety).
MAX_PIXELS = 64_000_000
PIXEL_BUDGET_VARIABLE = "VIT_MAX_PIXELS"  # overrides MAX_PIXELS, e.g. VIT_MAX_PIXELS=200000000
# The most bytes read whole from one file, tar member or data-set cell (an image's encoded bytes, a
# label member): an encoded picture within the pixel budget is far smaller (README: Safety).
MAX_FILE_BYTES = 256 * 2**20
FILE_BUDGET_VARIABLE = "VIT_MAX_FILE_BYTES"  # overrides MAX_FILE_BYTES
DRAFT_FORMATS = ("JPEG", "MPO")  # decoders that can scale down while decoding (1/2, 1/4, 1/8)
STRIP_PIXELS = 1 << 20  # conversions run on strips of rows of about this many pixels
# Decoded pictures above this many pixels are box-reduced while being converted, by a whole factor
# that keeps them at least twice the size the model's resize asks for; smaller ones are left exact.
REDUCE_ABOVE = 16_000_000
FULL_SIZE = "vitclassifier_full_size"  # key in a loaded image's info: (width, height) upright
ORIENTATION = 0x0112  # the EXIF tag, and the transposition each of its values asks for
TRANSPOSE_FOR = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


class ImageTooLarge(Image.DecompressionBombError):
    """A picture with more pixels than the budget that its format cannot decode at a smaller scale."""


class FileTooLarge(OSError):
    """A file, tar member or data-set cell over the byte bound (file_bound): refused unread."""


# What load_image raises for a file that can't be read as an image: callers catch exactly these.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Transparent pixels are laid on mid-grey: neutral after normalisation, unlike black.
TRANSPARENCY_BACKGROUND = (128, 128, 128)


def pixel_budget() -> int:
    """The most pixels load_image decodes: $VIT_MAX_PIXELS if set, else MAX_PIXELS. Pillow's own
    bomb limit is raised to match a larger budget, so that the larger budget holds."""
    text = os.environ.get(PIXEL_BUDGET_VARIABLE, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        budget = int(text)
    except ValueError:
        budget = 0
    if budget < 1:
        raise UserError(f"{PIXEL_BUDGET_VARIABLE}={text!r} is not a number of pixels: set it to a whole "
                        f"number such as {MAX_PIXELS} (the default), or unset it")
    if Image.MAX_IMAGE_PIXELS is not None and budget > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = budget
    return budget


def file_bound() -> int:
    """The most bytes read whole from one file, member or cell: $VIT_MAX_FILE_BYTES, else MAX_FILE_BYTES."""
    text = os.environ.get(FILE_BUDGET_VARIABLE, "").strip()
    if not text:
        return MAX_FILE_BYTES
    if not text.isdecimal() or int(text) < 1:
        raise UserError(f"{FILE_BUDGET_VARIABLE}={text!r} is not a number of bytes: set it to a whole "
                        f"number such as {MAX_FILE_BYTES} (the default), or unset it")
    return int(text)


def too_many_bytes(what: str, size: int, bound: int) -> FileTooLarge:
    """The one-line reason a file, member or cell of ``size`` bytes is not read."""
    return FileTooLarge(f"{what} is {size} bytes, over the bound of {bound} bytes read from one file: "
                        f"leave it out, or raise the bound with {FILE_BUDGET_VARIABLE}=<bytes>")


def read_bounded(stream: BinaryIO, what: str, size: int | None = None) -> bytes:
    """The whole of ``stream`` (``size``: its length, if known, checked first), refused (FileTooLarge)
    when over ``file_bound()``: at most one byte more than the bound is ever read."""
    bound = file_bound()
    if size is not None and size > bound:
        raise too_many_bytes(what, size, bound)
    data = stream.read(bound + 1)
    if len(data) > bound:
        raise too_many_bytes(what, size or len(data), bound)
    return data


def read_regular(path: str | Path) -> bytes:
    """The bytes of the regular file ``path`` (open_regular), within ``file_bound()``."""
    with open_regular(path) as file:
        return read_bounded(file, str(path), os.fstat(file.fileno()).st_size)


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, from its ``st_mode``, in words."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _not_regular(mode: int) -> OSError:
    return OSError(f"{file_kind(mode)}, not a regular file: only regular files are read as images")


def open_regular(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading in binary if it is a regular file (or a link to one). Anything else
    raises OSError without being opened: a named pipe would wait for a writer for ever, a device
    such as /dev/zero never ends. The open itself cannot block, should the file be swapped since."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _full_scale(image: Image.Image) -> float:
    """The value that becomes 255 for a 16/32-bit integer or float image.

    I;16 is 16-bit by definition; plain I and F hold whatever the file had, so the full scale is
    the smallest usual range the data fits in: 0..1 (floats), 0..255, 0..65535, else its peak."""
    if image.mode.startswith("I;16"):
        return 65535.0
    peak = max(float(image.getextrema()[1]), 0.0)
    return next((r for r in (1.0, 255.0, 65535.0) if peak <= r and (r > 1.0 or image.mode == "F")), peak)


def _high_depth_to_8bit(image: Image.Image, full_scale: float) -> Image.Image:
    """Scale 16/32-bit integer and float images into 0..255 (``full_scale`` -> 255, negatives -> 0)
    instead of clipping them to white. 16-bit pixels take integer maths: round(v / 257) exactly."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "u" and pixels.itemsize == 2 and full_scale == 65535.0:
        return Image.fromarray(((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8))
    scaled = np.clip(pixels.astype(np.float64), 0, None) * (255.0 / max(full_scale, 1e-12))
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_rgb(image: Image.Image, full_scale: float | None = None) -> Image.Image:
    """Convert any Pillow mode to RGB correctly (transparency composited on grey). ``full_scale``:
    the value that becomes 255 in a 16/32-bit or float image (None: found from this image)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_8bit(image, full_scale or _full_scale(image)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENCY_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _open(file: BinaryIO, path: str | Path, budget: int) -> Image.Image:
    """Image.open, its failures worded for the path (not the file object), bombs with the way out.

    Pillow warns (a two-line Python warning) on opening a picture of over 179 megapixels. Our budget
    is lower, so such a picture is then decoded at a reduced scale or refused with a one-line reason
    that names the way out: Pillow's warning would only repeat it. (Decoding threads may interleave
    here; the worst they can do is leave this one filter in place.)"""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file)
    except Image.UnidentifiedImageError:
        raise Image.UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None
    except Image.DecompressionBombError as error:  # Pillow's own limit: twice 179 megapixels
        raise ImageTooLarge(f"{error} The decoding budget is {budget / 1e6:g} megapixels: downscale the "
                            f"file, or raise the budget with {PIXEL_BUDGET_VARIABLE}=<pixels>") from None


def _scale_within(pixels: int, budget: int, largest: int) -> int:
    """The smallest power of two ``s`` (at most ``largest``) with ``pixels / s**2`` within ``budget``."""
    scale = 1
    while pixels > budget * scale * scale and scale < largest:
        scale *= 2
    return scale


def _too_large(size: tuple[int, int], budget: int, image_format: str | None, scale: int) -> ImageTooLarge:
    width, height = size
    how = (f"even decoded at 1/{scale} scale" if scale > 1
           else f"and {image_format or 'this format'} cannot be decoded at a smaller scale")
    return ImageTooLarge(f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the decoding "
                         f"budget of {budget / 1e6:g} megapixels {how}: downscale the file, or raise the "
                         f"budget with {PIXEL_BUDGET_VARIABLE}=<pixels>")


def _decode_within_budget(image: Image.Image, target_size: int | None, budget: int) -> None:
    """Decode ``image``, asking its decoder for a smaller picture where it can: a JPEG not below
    ``target_size`` (draft mode), any JPEG or JPEG 2000 within ``budget``. A picture that would still
    be over budget is refused before a pixel is decoded."""
    size = width, height = image.size
    scale = 1
    if image.format in DRAFT_FORMATS:
        scale = _scale_within(width * height, budget, 8)
        wanted = (max(1, width // scale), max(1, height // scale))
        if target_size:
            wanted = (min(wanted[0], target_size), min(wanted[1], target_size))
        if wanted != size:
            image.draft("RGB", wanted)
        planned = image.size
    elif image.format == "JPEG2000":
        scale = _scale_within(width * height, budget, 32)
        if scale > 1:
            image.reduce = scale.bit_length() - 1  # decode at resolution level 1/scale
        planned = (-(-width // scale), -(-height // scale))
    else:
        planned = size
    if planned[0] * planned[1] > budget:
        raise _too_large(size, budget, image.format, scale)
    image.load()


def _convert_in_strips(image: Image.Image, factor: int) -> Image.Image:
    """``to_rgb(image)`` box-reduced by ``factor``, a strip of rows at a time, so that besides the
    result only one strip is ever copied. Strips of whole multiples of ``factor`` rows reduce exactly
    as the whole picture would."""
    width, height = image.size
    full_scale = _full_scale(image) if image.mode.startswith("I") or image.mode == "F" else None
    rows = max(factor, STRIP_PIXELS // width // factor * factor)
    result = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(height, top + rows))), full_scale)
        result.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return result


def _rgb(image: Image.Image, target_size: int | None) -> Image.Image:
    """The decoded ``image`` as RGB; box-reduced when it has over REDUCE_ABOVE pixels, to no less
    than twice ``target_size`` (a long panorama without that room: to no less than ``target_size``)."""
    width, height = image.size
    factor = 1
    if target_size and width * height > REDUCE_ABOVE:
        short = min(width, height)
        factor = short // (2 * target_size)
        factor = factor if factor > 1 else max(1, short // target_size)
    if factor == 1 and (image.mode == "RGB" or width * height <= STRIP_PIXELS):
        rgb = to_rgb(image)
    elif image.mode == "RGB":
        rgb = image.reduce(factor)
    else:
        rgb = _convert_in_strips(image, factor)
    return rgb


def _open_source(source: str | Path | bytes | BinaryIO) -> BinaryIO:
    """A binary stream of ``source``: a path (a regular file only), the bytes of an encoded image
    (a row of a Hugging Face dataset, a member of a tar shard), an open stream, or an object with
    ``image_bytes()`` (data/hfdata.RowRef), whose bytes are fetched only now."""
    if hasattr(source, "image_bytes"):
        source = source.image_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if hasattr(source, "read"):
        return source
    return open_regular(source)


def load_image(path: str | Path | bytes | BinaryIO, target_size: int | None = None) -> Image.Image:
    """Open ``path`` as an upright RGB image (or encoded bytes, a stream, a data-set row: _open_source).

    ``target_size`` lets big pictures decode at a reduced scale (never below that size): JPEGs in
    draft mode, much faster than decoding 12 megapixels to feed a 224-pixel model, and any picture
    over REDUCE_ABOVE pixels by a box reduction right after decoding. Whatever ``target_size``, at
    most ``pixel_budget()`` pixels are decoded: a bigger picture is decoded smaller where its format
    allows, else refused (ImageTooLarge). Anything but a regular file raises OSError unread.
    The picture's own size, upright, whatever was decoded: ``info[FULL_SIZE]`` of the result.
    """
    budget = pixel_budget()
    try:
        with _open_source(path) as file:
            named = "encoded image bytes" if isinstance(path, (bytes, bytearray, memoryview)) else path
            image = _open(file, named, budget)
            width, height = image.size  # before a reduced decode
            # decode now, so truncated or corrupt files fail here, inside the try of the caller
            _decode_within_budget(image, target_size, budget)
            orientation = image.getexif().get(ORIENTATION, 1)
            rgb = _rgb(image, target_size)
            del image  # the decoded pixels go before the turn makes its copy
    except SyntaxError as error:  # Pillow's PNG reader reports a broken chunk this way
        raise OSError(f"broken image file: {error}") from error
    turn = TRANSPOSE_FOR.get(orientation)
    upright = rgb.transpose(turn) if turn is not None else rgb
    upright.info[FULL_SIZE] = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    return upright
