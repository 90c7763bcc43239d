"""Image buffers <-> numpy without cv_bridge (there is none that works with numpy 2 / OpenCV 5).

The functions take plain fields, or duck-typed message objects (rclpy ``sensor_msgs`` messages and
``rosbags`` dataclasses both have ``height width encoding is_bigendian step data``), so the nodes and the
offline evaluation decode images with the same code. Reading is zero-copy where the layout allows:
the array is a strided view of the message buffer (row padding skipped through strides).
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# The most pixels (width * height) an image may declare before it is decoded or read. Compressed payloads
# are refused from their header alone, so a tiny forged PNG/JPEG that claims a huge size (a decompression
# bomb) never reaches the decoder. 50 MP is comfortably above 8K UHD (7680x4320 = 33.2 MP) and the larger
# machine-vision sensors, and caps a decoded buffer at 50e6 * 3 B = 150 MB for 8-bit colour (400 MB for the
# worst case, 16-bit RGBA). OpenCV's own guard (CV_IO_MAX_IMAGE_PIXELS, 2**30) is far higher and raises
# cv2.error. The nodes can pass a lower ``max_pixels``.
MAX_IMAGE_PIXELS = 50_000_000

# encoding -> (channels, numpy dtype char, channel order of a colour image)
_LAYOUTS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "8UC1": (1, "u1"),
    "8UC3": (3, "u1"),
    "rgb16": (3, "u2"),
    "bgr16": (3, "u2"),
    "rgba16": (4, "u2"),
    "bgra16": (4, "u2"),
    "mono16": (1, "u2"),
    "16UC1": (1, "u2"),
    "32FC1": (1, "f4"),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)
# Single-channel encodings that hold measurements (depth), not a picture: never converted to colour.
_DEPTH_ENCODINGS = ("16UC1", "32FC1")
_COLOUR_ENCODINGS = tuple(e for e in _LAYOUTS if e not in _DEPTH_ENCODINGS)


class ImageFormatError(ValueError):
    """An image message that cannot be decoded (unsupported encoding, empty, truncated, too large, corrupt)."""


@dataclass(frozen=True)
class ImageFields:
    """The buffer-describing fields of a ``sensor_msgs/Image``."""

    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: Any  # a bytes-like object of at least step * height bytes


def _layout(encoding: str) -> tuple[int, str]:
    try:
        return _LAYOUTS[encoding]
    except KeyError:
        raise ImageFormatError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        ) from None


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ImageFormatError(
            f"{what} declares {width}x{height} = {width * height} pixels, above the limit of {max_pixels} pixels"
            " (max_image_pixels)"
        )


def image_to_array(msg: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an Image (message or :class:`ImageFields`) to an (H, W) or (H, W, C) array.

    Zero-copy for native-endian data: the result is a read-only view of ``msg.data``; keep the message alive
    while using it, or copy. Big-endian 16/32-bit data is byte-swapped into a new array. Images of more than
    ``max_pixels`` pixels are refused.
    """
    encoding = str(msg.encoding)
    channels, kind = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image ({width}x{height})")
    _check_pixels(width, height, max_pixels, f"{encoding} Image")
    dtype = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<") if kind != "u1" else np.dtype("u1")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageFormatError(f"step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} bytes)")
    buffer = (
        memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data.reshape(-1).view(np.uint8)
    )
    needed = step * (height - 1) + row_bytes
    if len(buffer) < needed:
        raise ImageFormatError(
            f"image data has {len(buffer)} bytes, {width}x{height} {encoding} with step {step} needs {needed}"
        )
    shape: tuple[int, ...] = (height, width, channels) if channels > 1 else (height, width)
    strides: tuple[int, ...] = (step, channels * dtype.itemsize, dtype.itemsize)[: len(shape)]
    array = np.ndarray(shape=shape, dtype=dtype, buffer=buffer, strides=strides)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def array_to_image(array: np.ndarray, encoding: str) -> ImageFields:
    """Encode an array as Image fields: tightly packed rows (step = width * pixel size), native byte order."""
    channels, kind = _layout(encoding)
    expected_ndim = 3 if channels > 1 else 2
    if array.ndim == 3 and channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ImageFormatError(
            f"array of shape {array.shape} does not fit encoding {encoding!r} ({channels} channel(s))"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageFormatError(f"empty image {array.shape}")
    packed = np.ascontiguousarray(array, dtype=np.dtype(kind))
    return ImageFields(
        height=int(packed.shape[0]),
        width=int(packed.shape[1]),
        encoding=encoding,
        is_bigendian=sys.byteorder == "big",
        step=int(packed.strides[0]),
        data=packed.data.cast("B"),
    )


def _high_byte(array: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit by keeping the high byte (value >> 8, e.g. 0xABCD -> 0xAB; truncates, not rounds).

    Written straight into a new uint8 array: no 16-bit temporary.
    """
    out = np.empty(array.shape, np.uint8)
    np.right_shift(array, 8, out=out, casting="unsafe")
    return out


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Colour models take 8-bit RGB: convert any 8- or 16-bit colour or mono image. Depth encodings are rejected.

    16-bit images (``mono16``, ``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``) are scaled by ``>> 8``. A depth
    image (``16UC1``, ``32FC1``) on a camera input is a wiring mistake, so it is refused, not scaled.
    """
    channels, kind = _layout(encoding)  # unknown encodings get the standard message
    if encoding in _DEPTH_ENCODINGS:
        raise ImageFormatError(
            f"encoding {encoding!r} is not a colour image; expected one of {', '.join(_COLOUR_ENCODINGS)}"
        )
    if array.ndim == 3 and channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if (
        array.dtype != np.dtype(kind)
        or array.ndim != (3 if channels > 1 else 2)
        or (channels > 1 and array.shape[2] != channels)
    ):
        raise ImageFormatError(f"{array.dtype} array of shape {array.shape} does not fit encoding {encoding!r}")
    if channels == 1:
        grey = _high_byte(array) if kind == "u2" else array
        return np.repeat(grey[:, :, None], 3, axis=2)
    if encoding.startswith("bgr"):
        array = array[:, :, 2::-1]
    elif channels == 4:  # rgba8, rgba16; rgb8, rgb16 and 8UC3 are already RGB
        array = array[:, :, :3]
    return _high_byte(array) if kind == "u2" else array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# PNG colour type -> the bit depths the specification allows for it
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# JPEG markers 0xC0..0xCF that are not a frame header: DHT, JPG (reserved), DAC
_JPEG_NOT_SOF = (0xC4, 0xC8, 0xCC)


def _png_size(data: memoryview) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which must directly follow the 8-byte signature."""
    if len(data) < 33:  # signature 8 + length 4 + type 4 + IHDR data 13 + CRC 4
        raise ImageFormatError(f"PNG data truncated: {len(data)} bytes, too short for the IHDR header")
    length, chunk_type = struct.unpack_from(">I4s", data, 8)
    if chunk_type != b"IHDR" or length != 13:
        raise ImageFormatError(f"malformed PNG: first chunk is {bytes(chunk_type)!r} of {length} bytes, not IHDR")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    (crc,) = struct.unpack_from(">I", data, 29)
    if zlib.crc32(data[12:29]) != crc:
        raise ImageFormatError("malformed PNG: IHDR CRC mismatch")
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise ImageFormatError(f"malformed PNG: IHDR size {width}x{height}")
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise ImageFormatError(f"malformed PNG: IHDR bit depth {depth} with colour type {colour}")
    return width, height


def _jpeg_size(data: memoryview) -> tuple[int, int]:
    """(width, height) from the first SOFn frame header, found by walking the marker segments after SOI."""
    size, i = len(data), 2  # past SOI
    while True:
        if i >= size:
            raise ImageFormatError("JPEG data truncated before the frame header (SOFn)")
        if data[i] != 0xFF:
            raise ImageFormatError(f"malformed JPEG: expected a marker at byte {i}, found 0x{data[i]:02X}")
        while i < size and data[i] == 0xFF:  # a marker may be preceded by any number of fill bytes
            i += 1
        if i >= size:
            raise ImageFormatError("JPEG data truncated before the frame header (SOFn)")
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: standalone, no length
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):  # stuffed zero, second SOI, EOI, SOS before any frame header
            raise ImageFormatError(f"malformed JPEG: marker 0xFF{marker:02X} before the frame header (SOFn)")
        if i + 2 > size:
            raise ImageFormatError("JPEG data truncated inside a marker segment")
        length = data[i] << 8 | data[i + 1]
        if length < 2:
            raise ImageFormatError(f"malformed JPEG: marker 0xFF{marker:02X} segment length {length}")
        if 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_SOF:
            if length < 8:  # length 2, precision 1, height 2, width 2, components 1
                raise ImageFormatError(f"malformed JPEG: frame header (SOFn) length {length}, below 8")
            if i + 8 > size:
                raise ImageFormatError("JPEG data truncated inside the frame header (SOFn)")
            height = data[i + 3] << 8 | data[i + 4]
            width = data[i + 5] << 8 | data[i + 6]
            if width == 0 or height == 0:  # height 0 defers it to a DNL marker, which decoders do not support
                raise ImageFormatError(f"malformed JPEG: frame header size {width}x{height}")
            return width, height
        i += length


def _one_line(error: Exception) -> str:
    """A decoder exception as one short line (cv2.error's text spans lines and names OpenCV source files)."""
    reason = getattr(error, "err", None) or str(error) or "no message"
    text = " ".join(str(reason).split())
    return f"{type(error).__name__}: {text[:200]}"


def _compressed_payload(msg: Any, max_pixels: int) -> tuple[np.ndarray, str, int, int]:
    """(bytes as uint8, 'png' | 'jpeg', width, height) of a CompressedImage, from its header alone.

    Refuses an unsupported format, a payload whose magic does not match ``msg.format``, a malformed header and a
    declared size over ``max_pixels``, all without decoding a pixel.
    """
    fmt = str(msg.format).lower()
    named = {name for name, words in (("png", ("png",)), ("jpeg", ("jpeg", "jpg"))) if any(w in fmt for w in words)}
    if not named or "compresseddepth" in fmt:
        raise ImageFormatError(f"unsupported CompressedImage format {msg.format!r}; supported: jpeg, png")
    raw = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data, np.uint8)
    if raw.size == 0:
        raise ImageFormatError("empty CompressedImage data")
    data = raw.data  # a memoryview: indexing yields ints, no copy
    if bytes(data[:8]) == _PNG_SIGNATURE:
        actual = "png"
    elif bytes(data[:2]) == _JPEG_SOI:
        actual = "jpeg"
    else:
        raise ImageFormatError(
            f"cannot decode {msg.format!r} CompressedImage data: neither PNG nor JPEG"
            f" (starts with {bytes(data[:8]).hex(' ')})"
        )
    if actual not in named:
        raise ImageFormatError(
            f"cannot decode CompressedImage data: format {msg.format!r} does not match its {actual.upper()} data"
        )
    width, height = _png_size(data) if actual == "png" else _jpeg_size(data)
    _check_pixels(width, height, max_pixels, actual.upper())
    return raw, actual, width, height


def compressed_to_array(msg: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage (jpeg / png) to (array, encoding).

    The encoding is 'mono8', 'bgr8', 'bgra8', or for 16-bit PNG 'mono16', 'bgr16', 'bgra16'. The declared
    size is read from the PNG IHDR / JPEG frame header first and a payload over ``max_pixels`` pixels is
    refused without decoding, as are a payload whose magic does not match ``msg.format`` and a malformed
    header. Every decoder failure is raised as :class:`ImageFormatError`.
    """
    import cv2

    raw, actual, _, _ = _compressed_payload(msg, max_pixels)
    try:
        image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except Exception as error:  # cv2.error, and whatever else a codec raises
        raise ImageFormatError(
            f"could not decode {msg.format!r} CompressedImage data ({raw.size} bytes): {_one_line(error)}"
        ) from error
    if image is None:
        raise ImageFormatError(f"could not decode {msg.format!r} CompressedImage data ({raw.size} bytes)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    bits = {np.dtype(np.uint8): "8", np.dtype(np.uint16): "16"}.get(image.dtype)
    channels = 1 if image.ndim == 2 else int(image.shape[2]) if image.ndim == 3 else 0
    layout = {1: "mono", 3: "bgr", 4: "bgra"}.get(channels)
    if bits is None or layout is None:
        raise ImageFormatError(f"decoded {actual.upper()} has an unsupported layout: {image.dtype} {image.shape}")
    _check_pixels(int(image.shape[1]), int(image.shape[0]), max_pixels, f"decoded {actual.upper()}")
    return image, layout + bits


def array_to_compressed(array: np.ndarray, encoding: str, fmt: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """Encode to (format string, bytes), the string as image_transport's compressed plugin writes it.

    For example 'rgb8; jpeg compressed bgr8'.
    """
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ImageFormatError(f"unsupported compression {fmt!r}; use 'jpeg' or 'png'")
    _, kind = _layout(encoding)
    if kind != "u1" and fmt != "png":
        raise ImageFormatError(f"{fmt} holds 8-bit images; compress {encoding} as png")
    if encoding in ("rgb8", "rgb16"):
        bgr = array[:, :, ::-1]
    elif encoding in ("rgba8", "rgba16"):
        bgr = array[:, :, [2, 1, 0, 3]]
    else:
        bgr = array
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    try:
        ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    except Exception as error:  # cv2.error: e.g. a channel count the codec does not take
        raise ImageFormatError(f"OpenCV could not encode a {encoding} image as {fmt}: {_one_line(error)}") from error
    if not ok:
        raise ImageFormatError(f"OpenCV could not encode a {encoding} image as {fmt}")
    bits = "16" if kind != "u1" else "8"
    target = ("mono" if bgr.ndim == 2 else ("bgra" if bgr.shape[2] == 4 else "bgr")) + bits
    return f"{encoding}; {fmt} compressed {target}", encoded.tobytes()


def decode_rgb(msg: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any supported Image or CompressedImage message -> (H, W, 3) uint8 RGB for the models.

    16-bit images are scaled to 8 bits (``>> 8``); images of more than ``max_pixels`` pixels are refused.
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        array, encoding = compressed_to_array(msg, max_pixels=max_pixels)
    else:
        array, encoding = image_to_array(msg, max_pixels=max_pixels), str(msg.encoding)
    return to_rgb(array, encoding)


def image_size(msg: Any, *, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of an Image or CompressedImage, checked without decoding its pixels.

    Refuses up front what :func:`decode_rgb` would refuse for its fields or header (unsupported encoding or
    format, truncated data, too many pixels), so a node can keep the message and decode it only if it is used;
    only a corrupt compressed body is found later, by the decoder.
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        _, _, width, height = _compressed_payload(msg, max_pixels)
        return width, height
    array = image_to_array(msg, max_pixels=max_pixels)  # a view of the buffer: the checks, no copy
    if str(msg.encoding) in _DEPTH_ENCODINGS:
        to_rgb(array, str(msg.encoding))  # raises the depth-on-a-camera-input message
    return int(array.shape[1]), int(array.shape[0])
