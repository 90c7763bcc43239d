"""Image <-> numpy conversion without cv_bridge: every encoding, row padding, byte order, compression."""

from __future__ import annotations

import numpy as np
import pytest
from ros_harness import header

from chatrex_ros.core.images import (
    SUPPORTED_ENCODINGS,
    ImageFields,
    ImageFormatError,
    array_to_compressed,
    array_to_image,
    compressed_to_array,
    decode_rgb,
    image_to_array,
    to_rgb,
)
from chatrex_ros.ros.conversions import compressed_image_msg, image_msg

SHAPES = {
    "rgb8": 3,
    "bgr8": 3,
    "rgba8": 4,
    "bgra8": 4,
    "mono8": 1,
    "8UC1": 1,
    "8UC3": 3,
    "mono16": 1,
    "16UC1": 1,
    "32FC1": 1,
}
DTYPES = {"mono16": np.uint16, "16UC1": np.uint16, "32FC1": np.float32}


def _random(encoding: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    channels = SHAPES[encoding]
    shape = (height, width, channels) if channels > 1 else (height, width)
    dtype = DTYPES.get(encoding, np.uint8)
    if dtype == np.float32:
        return rng.normal(1.5, 0.5, shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def _padded(array: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> ImageFields:
    """Hand-built message bytes with `pad` junk bytes after each row (as some drivers align rows)."""
    data = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = data.reshape(array.shape[0], -1).view(np.uint8)
    junk = np.full((array.shape[0], pad), 0xAB, np.uint8)
    buffer = np.concatenate([rows, junk], axis=1).tobytes()
    return ImageFields(array.shape[0], array.shape[1], encoding, big_endian, rows.shape[1] + pad, buffer)


def test_every_listed_encoding_is_covered() -> None:
    assert set(SUPPORTED_ENCODINGS) == set(SHAPES)


@pytest.mark.parametrize("encoding", sorted(SHAPES))
@pytest.mark.parametrize("size", [(4, 7), (3, 1), (31, 33)])
def test_packed_round_trip(encoding: str, size: tuple[int, int]) -> None:
    array = _random(encoding, *size)
    fields = array_to_image(array, encoding)
    assert fields.step == array.shape[1] * array.itemsize * SHAPES[encoding]
    np.testing.assert_array_equal(image_to_array(fields), array)


@pytest.mark.parametrize("encoding", sorted(SHAPES))
@pytest.mark.parametrize("pad", [1, 3, 8])
def test_row_padding_is_skipped_for_odd_widths(encoding: str, pad: int) -> None:
    array = _random(encoding, 5, 7, seed=pad)
    np.testing.assert_array_equal(image_to_array(_padded(array, encoding, pad)), array)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_data_is_byte_swapped(encoding: str) -> None:
    array = _random(encoding, 6, 5)
    decoded = image_to_array(_padded(array, encoding, 2, big_endian=True))
    assert decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, array)


def test_read_is_zero_copy_for_native_layouts() -> None:
    array = _random("rgb8", 8, 9)
    fields = _padded(array, "rgb8", 5)
    view = image_to_array(fields)
    assert not view.flags.owndata and np.shares_memory(view, np.frombuffer(fields.data, np.uint8))


@pytest.mark.parametrize(
    "encoding,expected", [("bgr8", [3, 2, 1]), ("rgba8", [1, 2, 3]), ("bgra8", [3, 2, 1]), ("mono8", [1, 1, 1])]
)
def test_to_rgb_reorders_channels(encoding: str, expected: list[int]) -> None:
    pixel = np.array([1, 2, 3, 4][: SHAPES[encoding]], np.uint8)
    array = np.broadcast_to(pixel, (2, 2, SHAPES[encoding])) if SHAPES[encoding] > 1 else np.ones((2, 2), np.uint8)
    assert to_rgb(array, encoding)[0, 0].tolist() == expected


def test_unsupported_encoding_names_the_encoding() -> None:
    fields = ImageFields(2, 2, "yuv422", False, 4, bytes(8))
    with pytest.raises(ImageFormatError, match="yuv422"):
        image_to_array(fields)
    with pytest.raises(ImageFormatError, match="not a colour image"):
        to_rgb(np.zeros((2, 2), np.uint16), "16UC1")


@pytest.mark.parametrize(
    "fields,message",
    [
        (ImageFields(0, 4, "rgb8", False, 12, b""), "empty"),
        (ImageFields(2, 4, "rgb8", False, 6, bytes(24)), "step"),
        (ImageFields(4, 4, "rgb8", False, 12, bytes(20)), "bytes"),
    ],
)
def test_malformed_buffers_raise_clear_errors(fields: ImageFields, message: str) -> None:
    with pytest.raises(ImageFormatError, match=message):
        image_to_array(fields)


def test_png_round_trip_is_lossless_and_jpeg_is_close() -> None:
    array = _random("rgb8", 24, 31)
    fmt, payload = array_to_compressed(array, "rgb8", "png")
    decoded, encoding = compressed_to_array(compressed_image_msg(fmt, payload, header(1)))
    np.testing.assert_array_equal(to_rgb(decoded, encoding), array)
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(16, axis=0)
    fmt, payload = array_to_compressed(smooth, "rgb8", "jpeg", quality=95)
    assert "jpeg" in fmt
    rgb = decode_rgb(compressed_image_msg(fmt, payload, header(1)))
    assert np.abs(rgb.astype(int) - smooth).mean() < 3


def test_corrupt_compressed_data_raises() -> None:
    with pytest.raises(ImageFormatError, match="decode"):
        compressed_to_array(compressed_image_msg("jpeg", b"not a jpeg at all", header(1)))
    with pytest.raises(ImageFormatError, match="format"):
        compressed_to_array(compressed_image_msg("tiff", b"xx", header(1)))


@pytest.mark.parametrize("encoding", sorted(SHAPES))
def test_ros_message_round_trip(encoding: str) -> None:
    array = _random(encoding, 3, 5)
    msg = image_msg(array, encoding, header(5))
    assert (msg.height, msg.width, msg.encoding) == (3, 5, encoding)
    np.testing.assert_array_equal(image_to_array(msg), array)
