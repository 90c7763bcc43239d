"""Image <-> numpy conversion without cv_bridge: every encoding, row padding, byte order, compression."""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from ros_harness import header

from chatrex_ros.core.images import (
    MAX_IMAGE_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageFields,
    ImageFormatError,
    array_to_compressed,
    array_to_image,
    compressed_to_array,
    decode_rgb,
    image_size,
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
    "rgb16": 3,
    "bgr16": 3,
    "rgba16": 4,
    "bgra16": 4,
    "mono16": 1,
    "16UC1": 1,
    "32FC1": 1,
}
DTYPES = {
    "rgb16": np.uint16,
    "bgr16": np.uint16,
    "rgba16": np.uint16,
    "bgra16": np.uint16,
    "mono16": np.uint16,
    "16UC1": np.uint16,
    "32FC1": np.float32,
}


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


# --- hostile CompressedImage / Image input: forged headers, decompression bombs, corrupt data, 16-bit ---


@dataclass
class Compressed:
    """What the decoder reads of a CompressedImage; no ROS needed."""

    format: str
    data: bytes


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def _forged_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose IHDR claims width x height: valid CRCs, a tiny IDAT (a decompression bomb's header)."""
    return _ihdr(width, height) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b"")


def _sof(width: int, height: int, marker: int = 0xC0) -> bytes:
    """A frame header segment: precision 8, one component."""
    return bytes([0xFF, marker]) + struct.pack(">HBHHB", 11, 8, height, width, 1) + bytes([1, 0x11, 0])


def _forged_jpeg(width: int, height: int, marker: int = 0xC0) -> bytes:
    return b"\xff\xd8" + _segment(0xDB, bytes(65)) + _sof(width, height, marker) + b"\xff\xd9"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _encoded(array: np.ndarray, ext: str) -> bytes:
    ok, encoded = cv2.imencode(ext, array)
    assert ok
    return encoded.tobytes()


def _gradient(height: int, width: int) -> np.ndarray:
    row = np.linspace(0, 255, width, dtype=np.uint8)
    return np.repeat(np.broadcast_to(row, (height, width))[:, :, None], 3, axis=2).copy()


def test_max_image_pixels_admits_8k() -> None:
    assert 7680 * 4320 < MAX_IMAGE_PIXELS == 50_000_000


# every frame-header marker SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
SOF_MARKERS = [m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)]
BOMBS = [
    ("png", _forged_png(40000, 30000), "40000x30000"),
    ("rgb8; png compressed bgr8", _forged_png(2**31 - 1, 1), f"{2**31 - 1}x1"),
    ("png", _forged_png(50_000_001, 1), "50000001x1"),
] + [(f"rgb8; jpeg compressed bgr8 sof{m - 0xC0}", _forged_jpeg(60000, 60000, m), "60000x60000") for m in SOF_MARKERS]


@pytest.mark.parametrize("fmt,payload,size", BOMBS, ids=[f"{i}-{b[0]}" for i, b in enumerate(BOMBS)])
def test_forged_huge_header_is_refused_before_decoding(
    fmt: str, payload: bytes, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args: object) -> None:
        raise AssertionError("the decoder was called on a payload over the pixel limit")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageFormatError, match="limit") as raised:
            decode_rgb(Compressed(fmt, payload))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size in str(raised.value) and str(MAX_IMAGE_PIXELS) in str(raised.value)
    assert elapsed < 0.5 and peak < 1_000_000


def test_forged_png_bomb_is_refused_by_the_real_decoder_path() -> None:
    """The bug report's case, end to end: 40000x30000 IHDR made cv2.imdecode raise cv2.error."""
    payload = _forged_png(40000, 30000)
    assert len(payload) < 120
    with pytest.raises(ImageFormatError, match="40000x30000.*limit"):
        compressed_to_array(Compressed("png", payload))


def _real_jpeg() -> bytes:
    return _encoded(_gradient(8, 8), ".jpg")


def _real_png() -> bytes:
    return _encoded(_gradient(8, 8), ".png")


def _flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


MALFORMED = [
    ("png", b"\x89PNG\r\n\x1a\n"),  # signature only
    ("png", _ihdr(8, 8)[:20]),  # IHDR cut short
    ("png", _flip_byte(_ihdr(8, 8), 30)),  # IHDR CRC wrong
    ("png", _ihdr(8, 8).replace(b"IHDR", b"IHDX")),  # first chunk is not IHDR
    ("png", _ihdr(0, 8) + _chunk(b"IEND", b"")),  # zero width
    ("png", _ihdr(8, 8, depth=3) + _chunk(b"IEND", b"")),  # impossible bit depth
    ("png", _ihdr(8, 8, depth=8, colour=5) + _chunk(b"IEND", b"")),  # no such colour type
    ("png", _ihdr(8, 8) + _chunk(b"IDAT", b"not zlib at all") + _chunk(b"IEND", b"")),  # header fine, data not
    ("png", _ihdr(8, 8) + _chunk(b"IEND", b"")),  # no image data
    ("png", _real_png()[: len(_real_png()) // 2]),  # truncated real PNG
    ("png", b"GIF89a" + bytes(40)),  # neither PNG nor JPEG
    ("png", _real_jpeg()),  # magic does not match the format string
    ("rgb8; png compressed bgr8", bytes(range(256))),
    ("jpeg", b"\xff\xd8"),  # SOI only
    ("jpeg", b"\xff\xd8\xff"),  # fill byte, then nothing
    ("jpeg", b"\xff\xd8\x12\x34\x56"),  # not a marker after SOI
    ("jpeg", b"\xff\xd8\xff\xd9"),  # EOI before any frame header
    ("jpeg", b"\xff\xd8\xff\xda\x00\x08" + bytes(6)),  # SOS before any frame header
    ("jpeg", b"\xff\xd8\xff\x00"),  # stuffed zero outside entropy data
    ("jpeg", b"\xff\xd8\xff\xd8"),  # second SOI
    ("jpeg", b"\xff\xd8\xff\xe0\x00"),  # segment length cut short
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x01"),  # segment length below 2
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF"),  # segment runs past the data
    ("jpeg", b"\xff\xd8" + _sof(8, 8)[:7]),  # frame header cut short
    ("jpeg", b"\xff\xd8\xff\xc0\x00\x05\x08\x00\x08"),  # frame header length too small
    ("jpeg", b"\xff\xd8" + _sof(8, 0) + b"\xff\xd9"),  # height 0 (DNL)
    ("jpeg", b"\xff\xd8" + _sof(0, 8) + b"\xff\xd9"),  # width 0
    ("jpeg", _forged_jpeg(8, 8)),  # header fine, no tables or scan
    ("jpeg", _real_jpeg()[: len(_real_jpeg()) // 2]),  # truncated real JPEG
    ("jpeg", b"not a jpeg at all"),
    ("rgb8; jpeg compressed bgr8", _real_png()),  # magic does not match the format string
    ("jpg", b"\x89PNG"),
]


@pytest.mark.parametrize("fmt,payload", MALFORMED, ids=[f"{i}-{m[0].split()[-1]}" for i, m in enumerate(MALFORMED)])
@pytest.mark.parametrize("decode", [compressed_to_array, decode_rgb])
def test_malformed_compressed_payloads_raise_image_format_error(
    fmt: str, payload: bytes, decode: Callable[[Compressed], object]
) -> None:
    with pytest.raises(ImageFormatError) as raised:  # never cv2.error
        decode(Compressed(fmt, payload))
    message = str(raised.value)
    assert "\n" not in message and re.search("png|jpe?g", message, re.IGNORECASE), message


@pytest.mark.parametrize("error", [cv2.error("OpenCV(5.0.0) x.cpp:1: error: (-215)\nin function 'f'\n"), MemoryError()])
def test_any_decoder_exception_becomes_image_format_error(error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object) -> None:
        raise error

    monkeypatch.setattr(cv2, "imdecode", failing)
    with pytest.raises(ImageFormatError, match="could not decode") as raised:
        decode_rgb(Compressed("png", _real_png()))
    assert raised.value.__cause__ is error and "\n" not in str(raised.value)


def test_jpeg_header_scan_skips_fill_bytes_standalone_markers_and_segments() -> None:
    real = _real_jpeg()
    decoy = _segment(0xEF, _sof(60000, 60000)[2:] + b"\xff\xc0")  # an APP15 whose payload looks like a SOF
    tweaked = real[:2] + b"\xff\xff\xff\x01" + b"\xff\xd3" + decoy + b"\xff\xff" + real[2:]
    rgb = decode_rgb(Compressed("jpeg", tweaked), max_pixels=64)
    np.testing.assert_array_equal(rgb, decode_rgb(Compressed("jpeg", real)))


@pytest.mark.parametrize("marker", [0xC4, 0xC8, 0xCC])
def test_jpeg_dht_jpg_dac_are_not_frame_headers(marker: int) -> None:
    """A segment with these markers whose bytes would read as 60000x60000 must be skipped, not taken as the size."""
    payload = b"\xff\xd8" + _sof(60000, 60000, marker) + _sof(8, 8) + b"\xff\xd9"
    with pytest.raises(ImageFormatError) as raised:
        decode_rgb(Compressed("jpeg", payload), max_pixels=64)
    assert "limit" not in str(raised.value) and "decode" in str(raised.value)
    with pytest.raises(ImageFormatError, match="8x8 = 64 pixels, above the limit of 63"):
        decode_rgb(Compressed("jpeg", payload), max_pixels=63)


@pytest.mark.parametrize("ext,fmt", [(".png", "rgb8; png compressed bgr8"), (".jpg", "rgb8; jpeg compressed bgr8")])
def test_compressed_image_exactly_at_the_limit_passes(ext: str, fmt: str) -> None:
    assert decode_rgb(Compressed(fmt, _encoded(_gradient(10, 10), ext)), max_pixels=100).shape == (10, 10, 3)
    array, _ = compressed_to_array(Compressed(fmt, _encoded(_gradient(10, 10), ext)), max_pixels=100)
    assert array.shape[:2] == (10, 10)
    for height, width in [(10, 11), (11, 10)]:
        payload = _encoded(_gradient(height, width), ext)
        with pytest.raises(ImageFormatError, match=f"{width}x{height} = 110 pixels, above the limit of 100"):
            decode_rgb(Compressed(fmt, payload), max_pixels=100)
        with pytest.raises(ImageFormatError, match="limit of 100"):
            compressed_to_array(Compressed(fmt, payload), max_pixels=100)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "32FC1"])
def test_raw_image_exactly_at_the_limit_passes(encoding: str) -> None:
    fields = array_to_image(_random(encoding, 10, 10), encoding)
    assert image_to_array(fields, max_pixels=100).shape[:2] == (10, 10)
    big = array_to_image(_random(encoding, 10, 11), encoding)
    with pytest.raises(ImageFormatError, match="11x10 = 110 pixels, above the limit of 100"):
        image_to_array(big, max_pixels=100)
    if encoding != "32FC1":
        assert decode_rgb(fields, max_pixels=100).shape == (10, 10, 3)
        with pytest.raises(ImageFormatError, match="limit of 100"):
            decode_rgb(big, max_pixels=100)


def test_raw_image_header_claiming_a_huge_size_is_refused() -> None:
    with pytest.raises(ImageFormatError, match="limit"):
        image_to_array(ImageFields(60000, 60000, "rgb8", False, 180000, bytes(12)))
    with pytest.raises(ImageFormatError, match="bytes"):  # under the limit: the length check still refuses it
        image_to_array(ImageFields(4000, 4000, "rgb8", False, 12000, bytes(12)))


def _rgb16(height: int, width: int) -> np.ndarray:
    rgb = np.random.default_rng(3).integers(0, 65536, (height, width, 3), dtype=np.uint16)
    rgb[0, 0] = [0xABCD, 0x1234, 0xFF00]
    return rgb


def test_16_bit_colour_png_becomes_8_bit_rgb() -> None:
    rgb = _rgb16(6, 7)
    payload = _encoded(np.ascontiguousarray(rgb[:, :, ::-1]), ".png")
    array, encoding = compressed_to_array(Compressed("bgr16; png compressed bgr16", payload))
    assert (encoding, array.dtype) == ("bgr16", np.uint16)
    np.testing.assert_array_equal(array[:, :, ::-1], rgb)
    decoded = decode_rgb(Compressed("bgr16; png compressed bgr16", payload))
    assert decoded.dtype == np.uint8 and decoded[0, 0].tolist() == [0xAB, 0x12, 0xFF]
    np.testing.assert_array_equal(decoded, rgb >> 8)


def test_16_bit_bgra_png_becomes_8_bit_rgb() -> None:
    rgba = np.concatenate([_rgb16(5, 4), np.full((5, 4, 1), 0x7777, np.uint16)], axis=2)
    payload = _encoded(np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]]), ".png")
    array, encoding = compressed_to_array(Compressed("png", payload))
    assert (encoding, array.dtype, array.shape) == ("bgra16", np.uint16, (5, 4, 4))
    np.testing.assert_array_equal(decode_rgb(Compressed("png", payload)), rgba[:, :, :3] >> 8)


def test_16_bit_grey_png_becomes_8_bit_rgb() -> None:
    grey = np.arange(0, 65536, 65536 // 48, dtype=np.uint16)[:48].reshape(6, 8)
    grey[0, 0] = 0xABCD
    payload = _encoded(grey, ".png")
    array, encoding = compressed_to_array(Compressed("mono16; png compressed mono16", payload))
    assert (encoding, array.dtype) == ("mono16", np.uint16)
    decoded = decode_rgb(Compressed("mono16; png compressed mono16", payload))
    assert decoded.dtype == np.uint8 and decoded.shape == (6, 8, 3) and decoded[0, 0].tolist() == [0xAB] * 3
    np.testing.assert_array_equal(decoded, np.repeat((grey >> 8)[:, :, None], 3, axis=2))


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16", "mono16"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_raw_16_bit_images_become_8_bit_rgb(encoding: str, big_endian: bool) -> None:
    array = _random(encoding, 5, 7, seed=4)
    if SHAPES[encoding] == 1:
        array[0, 0] = 0xABCD
        expected = np.repeat((array >> 8)[:, :, None], 3, axis=2)
    else:
        array[0, 0, 0 if encoding.startswith("rgb") else 2] = 0xABCD
        expected = (array[:, :, 2::-1] if encoding.startswith("bgr") else array[:, :, :3]) >> 8
    rgb = decode_rgb(_padded(array, encoding, 3, big_endian=big_endian))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3) and rgb[0, 0, 0] == 0xAB
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_images_are_not_colour(encoding: str) -> None:
    with pytest.raises(ImageFormatError, match="not a colour image"):
        decode_rgb(array_to_image(_random(encoding, 3, 4), encoding))


@pytest.mark.parametrize(
    "array,encoding",
    [
        (np.zeros((2, 2, 3), np.uint16), "bgr8"),
        (np.zeros((2, 2, 3), np.uint8), "bgr16"),
        (np.zeros((2, 2), np.uint8), "rgb8"),
        (np.zeros((2, 2, 3), np.uint16), "mono16"),
    ],
)
def test_to_rgb_refuses_an_array_that_does_not_fit_its_encoding(array: np.ndarray, encoding: str) -> None:
    with pytest.raises(ImageFormatError, match="does not fit"):
        to_rgb(array, encoding)


@pytest.mark.parametrize("encoding", ["rgb16", "rgba16", "bgr16", "mono16"])
def test_16_bit_png_compression_round_trip(encoding: str) -> None:
    array = _random(encoding, 4, 6, seed=5)
    fmt, payload = array_to_compressed(array, encoding, "png")
    decoded, decoded_encoding = compressed_to_array(Compressed(fmt, payload))
    assert fmt.endswith(decoded_encoding) and decoded.dtype == np.uint16
    np.testing.assert_array_equal(to_rgb(decoded, decoded_encoding), to_rgb(array, encoding))
    with pytest.raises(ImageFormatError, match="8-bit"):
        array_to_compressed(array, encoding, "jpeg")


@pytest.mark.parametrize("fmt,ext", [("jpeg", ".jpg"), ("png", ".png"), ("rgb8; jpeg compressed bgr8", ".jpg")])
def test_image_size_reads_a_compressed_header_without_decoding(
    fmt: str, ext: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _encoded(_gradient(37, 53), ext)  # 53 wide, 37 high

    def no_decoding(*args: object) -> None:
        raise AssertionError("image_size decoded the pixels")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    assert image_size(Compressed(fmt, payload)) == (53, 37)


def test_image_size_checks_a_raw_image_as_decode_rgb_does() -> None:
    rgb = np.zeros((30, 40, 3), np.uint8)
    assert image_size(image_msg(rgb, "bgr8", header(1))) == (40, 30)
    truncated = image_msg(rgb, "rgb8", header(1))
    truncated.data = truncated.data[:-1]
    depth = image_msg(np.zeros((30, 40), np.uint16), "16UC1", header(1))
    for bad in (truncated, depth):
        with pytest.raises(ImageFormatError) as from_decode:
            decode_rgb(bad)
        with pytest.raises(ImageFormatError) as from_size:
            image_size(bad)
        assert str(from_size.value) == str(from_decode.value)
    with pytest.raises(ImageFormatError, match="limit"):
        image_size(image_msg(rgb, "rgb8", header(1)), max_pixels=1000)
