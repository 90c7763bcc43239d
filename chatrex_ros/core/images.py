"""Image buffers <-> numpy without cv_bridge (there is none that works with numpy 2 / OpenCV 5).

The functions take plain fields, or duck-typed message objects (rclpy ``sensor_msgs`` messages and
``rosbags`` dataclasses both have ``height width encoding is_bigendian step data``), so the nodes and the
offline evaluation decode images with the same code. Reading is zero-copy where the layout allows:
the array is a strided view of the message buffer (row padding skipped through strides).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# encoding -> (channels, numpy dtype char, channel order of a colour image)
_LAYOUTS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "u1"),
    "bgr8": (3, "u1"),
    "rgba8": (4, "u1"),
    "bgra8": (4, "u1"),
    "mono8": (1, "u1"),
    "8UC1": (1, "u1"),
    "8UC3": (3, "u1"),
    "mono16": (1, "u2"),
    "16UC1": (1, "u2"),
    "32FC1": (1, "f4"),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_LAYOUTS)


class ImageFormatError(ValueError):
    """An image message that cannot be decoded (unsupported encoding, empty, truncated buffer)."""


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


def image_to_array(msg: Any) -> np.ndarray:
    """Decode an Image (message or :class:`ImageFields`) to an (H, W) or (H, W, C) array.

    Zero-copy for native-endian data: the result is a read-only view of ``msg.data``; keep the message alive
    while using it, or copy. Big-endian 16/32-bit data is byte-swapped into a new array.
    """
    encoding = str(msg.encoding)
    channels, kind = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image ({width}x{height})")
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


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Colour models take RGB: convert any 8-bit colour or mono image. Depth encodings are rejected."""
    if encoding in ("rgb8", "8UC3"):
        return array
    if encoding == "bgr8":
        return array[:, :, ::-1]
    if encoding == "rgba8":
        return array[:, :, :3]
    if encoding == "bgra8":
        return array[:, :, 2::-1]
    if encoding in ("mono8", "8UC1"):
        return np.repeat(array[:, :, None], 3, axis=2)
    _layout(encoding)  # unknown encodings get the standard message
    raise ImageFormatError(f"encoding {encoding!r} is not a colour image; expected rgb8, bgr8, rgba8, bgra8 or mono8")


def compressed_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage (jpeg / png) to (array, encoding): 'bgr8', 'mono8' or 'mono16'/'bgr16'."""
    import cv2

    fmt = str(msg.format).lower()
    if "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise ImageFormatError(f"unsupported CompressedImage format {msg.format!r}; supported: jpeg, png")
    raw = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray) else msg.data, np.uint8)
    if raw.size == 0:
        raise ImageFormatError("empty CompressedImage data")
    image = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageFormatError(f"could not decode {msg.format!r} CompressedImage data ({raw.size} bytes)")
    if image.ndim == 2:
        return image, "mono16" if image.dtype == np.uint16 else "mono8"
    if image.shape[2] == 4:
        return image, "bgra8"
    return image, "bgr8"


def array_to_compressed(array: np.ndarray, encoding: str, fmt: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """Encode to (format string, bytes) as image_transport's compressed plugin names it, e.g. 'rgb8; jpeg compressed bgr8'."""
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ImageFormatError(f"unsupported compression {fmt!r}; use 'jpeg' or 'png'")
    if encoding == "rgb8":
        bgr = array[:, :, ::-1]
    elif encoding == "rgba8":
        bgr = array[:, :, [2, 1, 0, 3]]
    else:
        _layout(encoding)
        bgr = array
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ImageFormatError(f"OpenCV could not encode a {encoding} image as {fmt}")
    target = "mono8" if bgr.ndim == 2 else ("bgra8" if bgr.shape[2] == 4 else "bgr8")
    return f"{encoding}; {fmt} compressed {target}", encoded.tobytes()


def decode_rgb(msg: Any) -> np.ndarray:
    """Any supported Image or CompressedImage message -> (H, W, 3) uint8 RGB for the models."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        array, encoding = compressed_to_array(msg)
    else:
        array, encoding = image_to_array(msg), str(msg.encoding)
    return to_rgb(array, encoding)
