"""Shared UPN pre-processing and output decoding against the reference pipeline's recorded values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.models.upn.processing import as_rgb, decode_outputs, detr_resize_hw, prepare_image, sigmoid

skimage_data = pytest.importorskip("skimage.data", reason="the golden images come from scikit-image's bundled data")

DATA = Path(__file__).parent / "data" / "upn"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "tiny_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {"astronaut": skimage_data.astronaut(), "coffee": skimage_data.coffee()}


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (800, 1066)),
        ((720, 1280), (750, 1333)),
        ((1080, 1920), (750, 1333)),
        ((512, 512), (800, 800)),
        ((400, 600), (800, 1200)),
        ((1333, 750), (1333, 750)),
        ((800, 1066), (800, 1066)),
        ((640, 480), (1066, 800)),
    ],
)
def test_detr_resize_rule(hw, expected):
    assert detr_resize_hw(*hw) == expected


def test_detr_resize_rule_with_the_tiny_sizes_and_errors():
    assert detr_resize_hw(400, 600, 400, 560) == (373, 559)  # max_size clamp, as the golden coffee input
    assert detr_resize_hw(512, 512, 400, 560) == (400, 400)
    with pytest.raises(ValueError, match="positive"):
        detr_resize_hw(0, 10)


@pytest.mark.parametrize("case", ["astronaut", "coffee"])
def test_prepare_image_reproduces_the_reference_input(golden, images, case):
    prepared = prepare_image(images[case], short=400, max_size=560)
    assert prepared.original_hw == tuple(golden[f"{case}__original_hw"][0])
    assert prepared.resized_hw == tuple(golden[f"{case}__resized_hw"][0])
    np.testing.assert_array_equal(
        prepared.pixels, golden[f"{case}__input"]
    )  # bit-exact: same PIL resize, same float32 steps


@pytest.mark.parametrize("case", ["astronaut", "coffee"])
def test_prepare_image_at_the_official_800_size(golden, images, case):
    prepared = prepare_image(images[case])
    assert prepared.pixels.shape[1:] == tuple(golden[f"{case}__official800_input_shape"])
    np.testing.assert_array_equal(prepared.pixels[0, :, ::8, ::8], golden[f"{case}__official800_input_stride8"])
    assert prepared.pixels.astype(np.float64).sum() == pytest.approx(
        float(golden[f"{case}__official800_input_sum"][0]), abs=1e-3
    )


def test_prepare_image_refuses_a_size_the_export_was_not_made_for(images):
    with pytest.raises(ValueError, match="export-upn --size 800x800"):
        prepare_image(images["astronaut"], input_hw=(750, 1333))
    assert prepare_image(images["astronaut"], input_hw=(800, 800)).pixels.shape == (1, 3, 800, 800)


def test_as_rgb_accepts_grey_and_rgba_and_rejects_the_rest():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = as_rgb(grey)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[..., 2], grey)
    rgba = np.dstack([np.full((3, 4), v, np.uint8) for v in (1, 2, 3, 255)])
    assert as_rgb(rgba)[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="uint8"):
        as_rgb(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        as_rgb(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        as_rgb(np.zeros((3, 4, 2), np.uint8))


@pytest.mark.parametrize(("case", "prompt"), [("astronaut", "coarse"), ("coffee", "fine")])
def test_decode_outputs_matches_the_reference_postprocess(golden, case, prompt):
    key = f"{case}__{prompt}__"
    raw = decode_outputs(
        golden[key + "pred_boxes"], golden[key + "pred_logits"], tuple(golden[f"{case}__original_hw"][0])
    )
    assert raw.boxes.dtype == np.float32 and raw.scores.dtype == np.float32 and raw.boxes.shape == (100, 4)
    order = golden[key + "post_order"][0]
    np.testing.assert_allclose(raw.boxes[order], golden[key + "post_boxes_xyxy"][0], atol=1e-3, rtol=0)
    np.testing.assert_allclose(raw.scores[order], golden[key + "post_scores"][0, :, 0], atol=1e-6, rtol=0)


def test_decode_outputs_rejects_mismatched_shapes_and_sigmoid_is_stable():
    with pytest.raises(ValueError, match="one image"):
        decode_outputs(np.zeros((2, 5, 4)), np.zeros((2, 5, 1)), (10, 10))
    with pytest.raises(ValueError, match="one image"):
        decode_outputs(np.zeros((5, 4)), np.zeros(4), (10, 10))
    values = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert values.tolist() == [0.0, 0.5, 1.0] and np.isfinite(values).all()
