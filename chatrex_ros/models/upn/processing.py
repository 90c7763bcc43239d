"""UPN pre-processing (encoder stage) and output decoding (decoder stage), shared by every backend.

numpy + Pillow only, so the ONNX Runtime and TensorRT backends use exactly the same code as the torch
one. Pre-processing follows the reference: RGB, DETR resize (short side -> 800, long side <= 1333, PIL
bilinear which antialiases when shrinking), /255, ImageNet mean/std, all in float32. Decoding turns the
raw network outputs into boxes in ORIGINAL image pixels and sigmoid scores; selection (threshold, NMS,
top-100) is left to ``select_proposals`` in the proposal pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatrex_ros.core.proposals import cxcywh_to_xyxy
from chatrex_ros.core.types import RawProposals

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the network: (1, 3, H, W) float32 pixels and the sizes to map boxes back."""

    pixels: np.ndarray
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]


def detr_resize_hw(height: int, width: int, short: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """Network input (H, W) of the DETR rule: short side -> ``short`` unless the long side passes ``max_size``.

    Same integer arithmetic as the reference (Python ``round`` then ``int`` truncation), so e.g.
    640x480 -> 800x1066 and 1280x720 / 1920x1080 -> 750x1333.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width} (HxW)")
    size = short
    small, large = float(min(width, height)), float(max(width, height))
    if large / small * size > max_size:
        size = int(round(max_size * small / large))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, 1) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> contiguous (H, W, 3) RGB.

    The reference forgets this conversion and breaks on grey or RGBA input.
    """
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"image must be a non-empty (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got {array.shape}"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def resize_rgb(image_rgb: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize (antialiased when shrinking, as the reference); no-op at the same size."""
    if image_rgb.shape[:2] == tuple(hw):
        return image_rgb
    from PIL import Image

    return np.asarray(Image.fromarray(image_rgb).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def normalise(image_rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 ImageNet-normalised, same float32 steps as torchvision."""
    x = image_rgb.astype(np.float32)
    x /= np.float32(255.0)
    x -= IMAGENET_MEAN
    x /= IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def prepare_image(
    image: np.ndarray, short: int = 800, max_size: int = 1333, input_hw: tuple[int, int] | None = None
) -> PreparedImage:
    """RGB -> DETR resize -> normalise.

    ``input_hw`` is the fixed size of an exported model or engine: the image must resize to exactly that size
    (one export per camera resolution).
    """
    rgb = as_rgb(image)
    original = (int(rgb.shape[0]), int(rgb.shape[1]))
    target = detr_resize_hw(*original, short=short, max_size=max_size)
    if input_hw is not None and tuple(input_hw) != target:
        raise ValueError(
            f"a {original[1]}x{original[0]} (WxH) image resizes to {target[0]}x{target[1]} (HxW), but the model was "
            f"exported for {input_hw[0]}x{input_hw[1]}; export one for this camera: "
            f"chatrex-ros export-upn --size {target[0]}x{target[1]} ..."
        )
    return PreparedImage(pixels=normalise(resize_rgb(rgb, target)), original_hw=original, resized_hw=target)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free float32 logistic function."""
    x = np.asarray(x, dtype=np.float32)
    return np.exp(-np.logaddexp(np.float32(0.0), -x)).astype(np.float32)


def decode_outputs(boxes_cxcywh: np.ndarray, logits: np.ndarray, original_hw: tuple[int, int]) -> RawProposals:
    """Raw outputs of ONE image -> every query as xyxy boxes in original pixels + sigmoid scores.

    Boxes are (Q, 4) or (1, Q, 4) normalised cx cy w h, logits (Q,), (Q, 1) or (1, Q, 1); the boxes are not
    clipped, as in the reference.
    """
    boxes = np.asarray(boxes_cxcywh, dtype=np.float32)
    boxes = boxes.reshape(-1, 4) if boxes.ndim == 3 and boxes.shape[0] == 1 else boxes
    scores = sigmoid(np.asarray(logits, dtype=np.float32).reshape(-1))
    if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected one image's (Q, 4) boxes and Q logits, "
            f"got boxes {np.shape(boxes_cxcywh)}, logits {np.shape(logits)}"
        )
    height, width = original_hw
    scale = np.array([width, height, width, height], dtype=np.float32)
    xyxy = (cxcywh_to_xyxy(boxes) * scale).astype(np.float32, copy=False)
    return RawProposals(boxes=xyxy, scores=scores)
