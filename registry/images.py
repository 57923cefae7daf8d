"""Decoding the images of image eval sets, with a short list of known decoders.

Pillow picks a plugin by the file's first bytes, and some of its plugins hand the bytes to other
programs: an EPS "image" makes Pillow run Ghostscript on it. An eval set is data, and data never
chooses code (MISSION "No file chooses code"), so every image is opened here, and only with the
decoders in `IMAGE_FORMATS`. Anything else is refused with the format its first bytes announce.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_FORMATS", "decode_image", "detected_format"]

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""Pillow's names of the only decoders an image reaches: what datasets store photos and renders in."""


def detected_format(data: bytes) -> str | None:
    """The format Pillow would take `data` for, from the signature checks of its plugins alone
    (each looks at the first bytes; no plugin parses or decodes anything here); None when none
    claims it."""
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for name in (*IMAGE_FORMATS, *Image.ID):
        accept = Image.OPEN.get(name, (None, None))[1]
        if accept is not None and accept(prefix):
            return name
    return None


def decode_image(data: bytes, *, what: str, path: str | Path | None = None) -> Image.Image:
    """The fully decoded image (every pixel read, so a truncated file is caught), opened only with
    the decoders of `IMAGE_FORMATS`. `what` names the image in a refusal ("row 3 (example 'x')"),
    `path` the file it came from; raises `InvalidInput` naming both."""
    from PIL import Image, UnidentifiedImageError

    fmt = detected_format(data)
    allowed = ", ".join(IMAGE_FORMATS)
    if fmt is None:
        raise InvalidInput(
            f"{what}: image is not a readable image (its first bytes match no image format; {allowed} are decoded)",
            path=path,
        )
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(
            f"{what}: image is {fmt}, which evalboard does not decode (only {allowed}; convert it to PNG)", path=path
        )
    try:
        im = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
        im.load()
    except UnidentifiedImageError:  # its message quotes the BytesIO object, not the problem
        raise InvalidInput(
            f"{what}: image is not a readable image ({fmt}: the decoder cannot parse it; damaged or truncated?)",
            path=path,
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidInput(f"{what}: image is not a readable image ({fmt}: {first})", path=path) from None
    return im
