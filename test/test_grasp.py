"""Grasp targeting geometry on synthetic, ray-traced depth scenes with known ground truth.

The scene is a wall (plane) at 1.5 m and a box-shaped object (an axis-aligned cuboid) whose front face
is at 0.8 m. Depth is rendered by intersecting each pixel's ray with the cuboid, so the truth (the
front face's centre) is known exactly and independent of the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatrex_ros.core.grasp import (
    DEFAULT_DEPTH_RANGE_M,
    DEFAULT_FOCAL_RANGE_PX,
    REASON_BAD_INTRINSICS,
    REASON_DEPTH_RANGE,
    REASON_FRAME_MISMATCH,
    REASON_NO_CAMERA_INFO,
    REASON_NO_DEPTH,
    REASON_NO_DETECTION,
    REASON_OUTSIDE,
    REASON_SIZE_MISMATCH,
    CameraGeometry,
    Target,
    approach_quaternion,
    back_project,
    foreground_interval,
    intrinsics_problem,
    intrinsics_valid,
    scale_box,
    scale_box_with_intrinsics,
    target_from_box,
    target_from_colour_box,
)

WIDTH, HEIGHT = 640, 480
# Non-integer principal point: no pixel ray is exactly on the optical axis, and an off-by-half-pixel
# error in the code would show up.
K_COLOUR = np.array([[525.0, 0.0, 322.3], [0.0, 521.0, 236.8], [0.0, 0.0, 1.0]])
OBJECT_MIN = (-0.06, -0.04, 0.80)  # straddles the optical axis: only the front face is visible
OBJECT_MAX = (0.08, 0.05, 0.90)
WALL_Z = 1.5
FACE_CENTRE = np.array([(OBJECT_MIN[0] + OBJECT_MAX[0]) / 2, (OBJECT_MIN[1] + OBJECT_MAX[1]) / 2, OBJECT_MIN[2]])
TOLERANCE_M = 0.01
ENCODINGS = ["16UC1", "32FC1"]


def render_depth(
    K: np.ndarray,
    width: int,
    height: int,
    *,
    object_min: tuple[float, float, float] = OBJECT_MIN,
    object_max: tuple[float, float, float] = OBJECT_MAX,
    noise_m: float = 0.002,
    seed: int = 0,
) -> np.ndarray:
    """Ray-traced z-depth (metres, float64) of the cuboid in front of the wall, with Gaussian noise."""
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    xn = (cols - K[0, 2]) / K[0, 0]
    yn = (rows - K[1, 2]) / K[1, 1]
    # Ray (xn, yn, 1) * t has z = t: slab intersection with the cuboid in t.
    tx = np.stack([object_min[0] / xn, object_max[0] / xn])
    ty = np.stack([object_min[1] / yn, object_max[1] / yn])
    enter = np.maximum.reduce([tx.min(0), ty.min(0), np.full_like(xn, object_min[2])])
    leave = np.minimum.reduce([tx.max(0), ty.max(0), np.full_like(xn, object_max[2])])
    depth = np.where(enter <= leave, enter, WALL_Z)
    return depth + np.random.default_rng(seed).normal(0.0, noise_m, depth.shape)


def encode(depth_m: np.ndarray, encoding: str, invalid: np.ndarray | None = None) -> np.ndarray:
    """As a driver would publish it (REP 118): 16UC1 millimetres with 0 = invalid, 32FC1 metres with NaN/inf."""
    invalid = np.zeros(depth_m.shape, bool) if invalid is None else invalid
    if encoding == "16UC1":
        out = np.round(depth_m * 1000.0).astype(np.uint16)
        out[invalid] = 0
        return out
    out = depth_m.astype(np.float32)
    out[invalid] = np.nan
    out[invalid & (np.arange(out.size).reshape(out.shape) % 3 == 0)] = np.inf  # drivers use both
    return out


def project_box(
    K: np.ndarray, face_min: tuple[float, float], face_max: tuple[float, float], z: float
) -> tuple[float, ...]:
    """Box (box pixel convention: image spans [0, W]) around the front face at depth z."""
    x1 = K[0, 0] * face_min[0] / z + K[0, 2] + 0.5
    x2 = K[0, 0] * face_max[0] / z + K[0, 2] + 0.5
    y1 = K[1, 1] * face_min[1] / z + K[1, 2] + 0.5
    y2 = K[1, 1] * face_max[1] / z + K[1, 2] + 0.5
    return (x1, y1, x2, y2)


TIGHT_BOX = project_box(K_COLOUR, OBJECT_MIN[:2], OBJECT_MAX[:2], OBJECT_MIN[2])


def scaled_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
    """K of the same view at ``factor`` times the resolution (pixel-centre convention)."""
    scaled = K.copy()
    scaled[0, 0] *= factor
    scaled[1, 1] *= factor
    scaled[0, 2] = (K[0, 2] + 0.5) * factor - 0.5
    scaled[1, 2] = (K[1, 2] + 0.5) * factor - 0.5
    return scaled


def error_m(target: Target, truth: np.ndarray = FACE_CENTRE) -> float:
    return float(np.linalg.norm(np.asarray(target.point) - truth))


def rotate(q: tuple[float, float, float, float], v: np.ndarray) -> np.ndarray:
    """Rotate v by unit quaternion (x, y, z, w): v + 2w(q x v) + 2 q x (q x v)."""
    axis, w = np.asarray(q[:3]), q[3]
    c = np.cross(axis, v)
    return v + 2.0 * w * c + 2.0 * np.cross(axis, c)


# ------------------------------------------------------------------------------------------
# Accuracy on the synthetic scene
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_m() -> np.ndarray:
    return render_depth(K_COLOUR, WIDTH, HEIGHT)


def test_scene_renders_object_and_wall(scene_m: np.ndarray) -> None:
    # Guards the test's own ground truth: the object's pixels are the tight box's pixels.
    x1, y1, x2, y2 = (int(round(c)) for c in TIGHT_BOX)
    assert abs(np.median(scene_m[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]) - 0.8) < 0.001
    assert abs(np.median(scene_m[:, : x1 - 2]) - WALL_Z) < 0.001


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_tight_box_is_within_1cm(scene_m: np.ndarray, encoding: str) -> None:
    target = target_from_box(encode(scene_m, encoding), K_COLOUR, TIGHT_BOX)
    assert target.valid and target.reason == ""
    assert error_m(target) < TOLERANCE_M
    assert target.valid_fraction == 1.0


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_box_half_over_background_is_within_1cm(scene_m: np.ndarray, encoding: str) -> None:
    x1, y1, x2, y2 = TIGHT_BOX
    box = (x1, y1, x2 + (x2 - x1), y2)  # twice as wide: half of it is the wall at 1.5 m
    target = target_from_box(encode(scene_m, encoding), K_COLOUR, box)
    assert target.valid
    assert error_m(target) < TOLERANCE_M


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_box_mostly_background_needs_foreground_selection(scene_m: np.ndarray, encoding: str) -> None:
    x1, y1, x2, y2 = TIGHT_BOX
    w, h = x2 - x1, y2 - y1
    box = (x1 - 0.5 * w, y1 - 0.5 * h, x2 + 0.6 * w, y2 + 0.4 * h)  # object is ~25 % of the box
    depth = encode(scene_m, encoding)
    chosen = target_from_box(depth, K_COLOUR, box)
    naive = target_from_box(depth, K_COLOUR, box, foreground=False)
    assert error_m(chosen) < TOLERANCE_M
    assert abs(naive.point[2] - WALL_Z) < 0.01  # what a plain median returns: the wall


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_30_percent_invalid_pixels_is_within_1cm(scene_m: np.ndarray, encoding: str) -> None:
    invalid = np.random.default_rng(1).random(scene_m.shape) < 0.30
    target = target_from_box(encode(scene_m, encoding, invalid), K_COLOUR, TIGHT_BOX)
    assert target.valid
    assert error_m(target) < TOLERANCE_M
    assert abs(target.valid_fraction - 0.70) < 0.03


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_depth_at_half_colour_resolution_is_within_1cm(encoding: str) -> None:
    k_depth = scaled_intrinsics(K_COLOUR, 0.5)
    depth = encode(render_depth(k_depth, WIDTH // 2, HEIGHT // 2), encoding)
    depth_camera = CameraGeometry(k_depth, WIDTH // 2, HEIGHT // 2, "camera_color_optical_frame")
    colour_camera = CameraGeometry(K_COLOUR, WIDTH, HEIGHT, "camera_color_optical_frame")

    by_intrinsics = target_from_colour_box(
        depth,
        TIGHT_BOX,
        depth_camera=depth_camera,
        colour_camera=colour_camera,
        depth_frame_id="camera_color_optical_frame",
    )
    by_size = target_from_colour_box(depth, TIGHT_BOX, depth_camera=depth_camera, colour_size=(WIDTH, HEIGHT))
    unmapped = target_from_colour_box(depth, TIGHT_BOX, depth_camera=depth_camera)  # box wrongly taken as depth pixels

    assert by_intrinsics.valid and error_m(by_intrinsics) < TOLERANCE_M
    assert by_size.valid and error_m(by_size) < TOLERANCE_M
    assert not unmapped.valid or error_m(unmapped) > 0.05


def test_box_partly_outside_is_clipped(scene_m: np.ndarray) -> None:
    # The object is cut by the image's left edge: the truth is the centre of its visible part.
    obj_min, obj_max = (-0.60, -0.04, 0.8), (-0.40, 0.05, 0.9)
    depth = render_depth(K_COLOUR, WIDTH, HEIGHT, object_min=obj_min, object_max=obj_max)
    box = project_box(K_COLOUR, obj_min[:2], obj_max[:2], 0.8)
    assert box[0] < 0.0 < box[2]
    left_edge_x = (0.0 - 0.5 - K_COLOUR[0, 2]) / K_COLOUR[0, 0] * 0.8
    truth = np.array([(left_edge_x + obj_max[0]) / 2, (obj_min[1] + obj_max[1]) / 2, 0.8])

    target = target_from_box(depth.astype(np.float32), K_COLOUR, box)
    assert target.valid
    assert error_m(target, truth) < TOLERANCE_M
    assert 0.0 <= target.pixel[0] <= box[2]
    # The width across the approach: along the ray, the visible face is seen foreshortened; along the face's
    # normal (surface_normal), it is the visible width itself.
    ray = np.array(target.point) / np.linalg.norm(target.point)
    visible = obj_max[0] - left_edge_x
    assert abs(target.width_m - visible * math.sqrt(1.0 - ray[0] ** 2)) < TOLERANCE_M
    facing = target_from_box(depth.astype(np.float32), K_COLOUR, box, approach="surface_normal")
    assert abs(facing.width_m - visible) < TOLERANCE_M


def test_off_axis_object_with_visible_side_face(scene_m: np.ndarray) -> None:
    obj_min, obj_max = (0.10, 0.06, 0.8), (0.22, 0.15, 0.9)  # its left and top faces are visible too
    depth = render_depth(K_COLOUR, WIDTH, HEIGHT, object_min=obj_min, object_max=obj_max)
    far_corner = project_box(K_COLOUR, obj_min[:2], obj_min[:2], 0.9)
    near_box = project_box(K_COLOUR, obj_min[:2], obj_max[:2], 0.8)
    box = (far_corner[0], far_corner[1], near_box[2], near_box[3])  # whole silhouette
    truth = np.array([(obj_min[0] + obj_max[0]) / 2, (obj_min[1] + obj_max[1]) / 2, 0.8])
    target = target_from_box(encode(depth, "16UC1"), K_COLOUR, box)
    assert error_m(target, truth) < TOLERANCE_M


def test_metric_size_of_the_object(scene_m: np.ndarray) -> None:
    target = target_from_box(encode(scene_m, "32FC1"), K_COLOUR, TIGHT_BOX)
    assert abs(target.width_m - (OBJECT_MAX[0] - OBJECT_MIN[0])) < TOLERANCE_M
    assert abs(target.height_m - (OBJECT_MAX[1] - OBJECT_MIN[1])) < TOLERANCE_M


def test_depth_spread_is_the_interquartile_range_of_the_noise() -> None:
    sigma = 0.005
    depth = render_depth(K_COLOUR, WIDTH, HEIGHT, noise_m=sigma, seed=3).astype(np.float32)
    target = target_from_box(depth, K_COLOUR, TIGHT_BOX)
    gaussian_iqr = 2 * 0.6744897501960817 * sigma
    assert abs(target.depth_spread - gaussian_iqr) < 0.15 * gaussian_iqr
    assert abs(target.depth_median - 0.8) < 0.001


def test_percentile_selects_along_a_slanted_surface() -> None:
    # A ramp from 0.75 m (left) to 0.85 m (right) across the object: the percentile picks a depth.
    depth = np.full((HEIGHT, WIDTH), WALL_Z, np.float32)
    depth[200:280, 280:380] = np.linspace(0.75, 0.85, 100, dtype=np.float32)[None, :]
    box = (280, 200, 380, 280)
    near = target_from_box(depth, K_COLOUR, box, percentile=10.0, margin=0.0)
    middle = target_from_box(depth, K_COLOUR, box, percentile=50.0, margin=0.0)
    far = target_from_box(depth, K_COLOUR, box, percentile=90.0, margin=0.0)
    # The dense run covers the whole ramp, so the percentiles are the ramp's own.
    assert near.point[2] == pytest.approx(0.76, abs=0.003)
    assert middle.point[2] == pytest.approx(0.80, abs=0.003)
    assert far.point[2] == pytest.approx(0.84, abs=0.003)
    assert middle.depth_median == pytest.approx(middle.point[2])


def test_sparse_near_pixels_are_skipped_but_a_dense_nearer_surface_wins(scene_m: np.ndarray) -> None:
    depth = encode(scene_m, "32FC1")
    x1, y1, x2, y2 = (int(round(c)) for c in TIGHT_BOX)
    rng = np.random.default_rng(2)
    speckled = depth.copy()
    roi = speckled[y1:y2, x1:x2]
    roi[rng.random(roi.shape) < 0.05] = 0.3  # flying pixels / dust: below the mode threshold
    assert abs(target_from_box(speckled, K_COLOUR, TIGHT_BOX).point[2] - 0.8) < 0.005

    occluded = depth.copy()
    occluded[y1:y2, x1 : x1 + (x2 - x1) // 2] = 0.5  # something in front covering half the object
    assert abs(target_from_box(occluded, K_COLOUR, TIGHT_BOX).point[2] - 0.5) < 0.005


def test_depth_scale_overrides_the_default_units(scene_m: np.ndarray) -> None:
    tenth_mm = np.round(scene_m * 10000).astype(np.uint16)  # 0.1 mm units
    as_int32 = np.round(scene_m * 1000).astype(np.int32)
    assert error_m(target_from_box(tenth_mm, K_COLOUR, TIGHT_BOX, depth_scale=1e-4)) < TOLERANCE_M
    assert error_m(target_from_box(as_int32, K_COLOUR, TIGHT_BOX, depth_scale=1e-3)) < TOLERANCE_M
    wrong = target_from_box(tenth_mm, K_COLOUR, TIGHT_BOX)  # read as millimetres: 10x too far
    assert wrong.point[2] == pytest.approx(8.0, abs=0.1)


def test_back_projection_uses_the_pixel_centre_convention() -> None:
    # The box-convention point (cx + 0.5, cy + 0.5) is the centre of the principal pixel: on the axis.
    assert back_project(K_COLOUR, K_COLOUR[0, 2] + 0.5, K_COLOUR[1, 2] + 0.5, 2.0) == pytest.approx((0.0, 0.0, 2.0))
    x, y, z = back_project(K_COLOUR, K_COLOUR[0, 2] + 0.5 + 525.0, K_COLOUR[1, 2] + 0.5 - 52.1, 2.0)
    assert (x, y, z) == pytest.approx((2.0, -0.2, 2.0))


# ------------------------------------------------------------------------------------------
# Invalid cases: valid=False with the right reason
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_all_invalid_depth(scene_m: np.ndarray, encoding: str) -> None:
    depth = encode(scene_m, encoding, invalid=np.ones(scene_m.shape, bool))
    target = target_from_box(depth, K_COLOUR, TIGHT_BOX)
    assert not target.valid and target.reason == REASON_NO_DEPTH
    assert target.valid_fraction == 0.0
    assert all(math.isnan(c) for c in target.point)


def test_negative_depth_counts_as_invalid() -> None:
    depth = np.full((HEIGHT, WIDTH), -1.0, np.float32)
    assert target_from_box(depth, K_COLOUR, TIGHT_BOX).reason == REASON_NO_DEPTH


@pytest.mark.parametrize(
    "box",
    [
        (700.0, 100.0, 800.0, 200.0),  # right of the image
        (-50.0, -50.0, -1.0, -1.0),  # above-left
        (100.0, 480.0, 200.0, 600.0),  # starts at the bottom edge
        (300.0, 200.0, 300.0, 260.0),  # zero width
        (300.0, 260.0, 350.0, 200.0),  # y2 < y1
    ],
)
def test_box_outside_or_degenerate(scene_m: np.ndarray, box: tuple[float, ...]) -> None:
    target = target_from_box(encode(scene_m, "16UC1"), K_COLOUR, box)
    assert not target.valid and target.reason == REASON_OUTSIDE


@pytest.mark.parametrize(
    "k",
    [
        np.zeros((3, 3)),  # uncalibrated CameraInfo
        np.array([[525.0, 0, 320], [0, np.nan, 240], [0, 0, 1]]),
        np.array([[-525.0, 0, 320], [0, 525, 240], [0, 0, 1]]),
        np.array([[525.0, 0, 320], [0, 525, 240], [0, 0, 0]]),
    ],
)
def test_bad_intrinsics(scene_m: np.ndarray, k: np.ndarray) -> None:
    assert not intrinsics_valid(k)
    problem = intrinsics_problem(k, (WIDTH, HEIGHT))
    assert problem is not None
    target = target_from_box(encode(scene_m, "32FC1"), k, TIGHT_BOX)
    assert not target.valid and target.reason == f"{REASON_BAD_INTRINSICS}: {problem}"


def test_node_level_refusals(scene_m: np.ndarray) -> None:
    depth = encode(scene_m, "16UC1")
    camera = CameraGeometry(K_COLOUR.ravel(), WIDTH, HEIGHT, "camera_depth_optical_frame")

    assert target_from_colour_box(depth, None, depth_camera=camera).reason == REASON_NO_DETECTION
    assert target_from_colour_box(depth, TIGHT_BOX, depth_camera=None).reason == REASON_NO_CAMERA_INFO
    mismatched = target_from_colour_box(
        depth, TIGHT_BOX, depth_camera=camera, depth_frame_id="camera_color_optical_frame"
    )
    assert not mismatched.valid and mismatched.reason == REASON_FRAME_MISMATCH
    half = CameraGeometry(scaled_intrinsics(K_COLOUR, 0.5), WIDTH // 2, HEIGHT // 2, "camera_depth_optical_frame")
    assert target_from_colour_box(depth, TIGHT_BOX, depth_camera=half).reason == REASON_SIZE_MISMATCH
    uncalibrated_colour = CameraGeometry(np.zeros(9), WIDTH, HEIGHT)
    assert (
        target_from_colour_box(depth, TIGHT_BOX, depth_camera=camera, colour_camera=uncalibrated_colour).reason
        == f"{REASON_BAD_INTRINSICS}: colour camera: K is all zero (an uncalibrated camera)"
    )
    # A ROS 1 style leading slash names the same frame; with everything right the target is valid.
    ok = target_from_colour_box(depth, TIGHT_BOX, depth_camera=camera, depth_frame_id="/camera_depth_optical_frame")
    assert ok.valid and error_m(ok) < TOLERANCE_M


# ------------------------------------------------------------------------------------------
# Physically absurd input: refused with the reason, never a valid target far from the truth
# ------------------------------------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
ABSURD_DEPTHS_M = [1e-30, 1e-6, 0.01, 0.049, 20.01, 1e4, 3.4e38, F32_MAX, math.inf, -math.inf, math.nan, -0.8]


@pytest.mark.parametrize("value", ABSURD_DEPTHS_M, ids=repr)
def test_absurd_depth_everywhere_is_refused(value: float) -> None:
    depth = np.full((HEIGHT, WIDTH), value, np.float32)
    target = target_from_box(depth, K_COLOUR, TIGHT_BOX)
    assert not target.valid and target.valid_fraction == 0.0
    assert all(math.isnan(c) for c in target.point)
    if math.isfinite(value) and value > 0.0:  # depth was there, but not where an object can be
        assert target.reason.startswith(f"{REASON_DEPTH_RANGE} (0.05..20 m)"), target.reason
        assert f"{value:.3g}" in target.reason or "3.4e+38" in target.reason
    else:
        assert target.reason == REASON_NO_DEPTH


@pytest.mark.parametrize("value", ABSURD_DEPTHS_M, ids=repr)
@pytest.mark.parametrize("foreground", [True, False])
def test_absurd_depth_pixels_are_not_used(scene_m: np.ndarray, value: float, foreground: bool) -> None:
    # A third of the object's pixels absurd (e.g. 1e-30 m would be "nearest" for the foreground mode).
    depth = encode(scene_m, "32FC1")
    rows, cols = np.indices(depth.shape)
    depth[(rows + cols) % 3 == 0] = value
    target = target_from_box(depth, K_COLOUR, TIGHT_BOX, foreground=foreground)
    assert target.valid, target.reason
    assert error_m(target) < TOLERANCE_M
    assert target.valid_fraction == pytest.approx(2 / 3, abs=0.02)


def test_depth_range_is_inclusive_and_configurable(scene_m: np.ndarray) -> None:
    depth = encode(scene_m, "16UC1")  # the face at 0.8 m, the wall at 1.5 m
    assert target_from_box(depth, K_COLOUR, TIGHT_BOX, depth_range=(0.8, 0.9)).valid
    near_only = target_from_box(depth, K_COLOUR, TIGHT_BOX, depth_range=(0.05, 0.5))
    assert not near_only.valid and near_only.reason.startswith(f"{REASON_DEPTH_RANGE} (0.05..0.5 m)")
    exact = np.full((HEIGHT, WIDTH), 50, np.uint16)  # exactly min_depth: 50 mm
    assert target_from_box(exact, K_COLOUR, TIGHT_BOX).point[2] == pytest.approx(0.05)


def k_with(fx: float = 525.0, fy: float = 521.0, cx: float = 322.3, cy: float = 236.8) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    ("k", "problem"),
    [
        (k_with(fx=1e-3), "fx = 0.001 px is outside the plausible focal length range 10..100000 px"),
        (k_with(fy=1e-30), "fy = 1e-30 px is outside"),
        (k_with(fx=9.99), "fx = 9.99 px is outside"),
        (k_with(fx=1e6), "fx = 1e+06 px is outside"),
        (k_with(fy=3.4e38), "fy = 3.4e+38 px is outside"),
        (k_with(fx=-525.0), "fx = -525 px is outside"),
        (k_with(fx=0.0), "fx = 0 px is outside"),
        (k_with(fx=math.inf), "non-finite"),
        (k_with(cy=math.nan), "non-finite"),
        (k_with(cx=1e9), "cx = 1e+09 px is far outside the image (640 px; allowed -640..1280 px)"),
        (k_with(cx=-700.0), "cx = -700 px is far outside"),
        (k_with(cy=1000.0), "cy = 1000 px is far outside the image (480 px"),
        (np.zeros((3, 3)), "all zero"),
    ],
)
def test_absurd_intrinsics_are_refused_with_the_reason(scene_m: np.ndarray, k: np.ndarray, problem: str) -> None:
    found = intrinsics_problem(k, (WIDTH, HEIGHT))
    assert found is not None and problem in found
    depth = encode(scene_m, "32FC1")
    target = target_from_box(depth, k, TIGHT_BOX)
    assert not target.valid and target.reason == f"{REASON_BAD_INTRINSICS}: {found}"
    camera = CameraGeometry(k, WIDTH, HEIGHT, "depth")
    refused = target_from_colour_box(depth, TIGHT_BOX, depth_camera=camera)
    assert refused.reason == f"{REASON_BAD_INTRINSICS}: depth camera: {found}"
    good = CameraGeometry(K_COLOUR, WIDTH, HEIGHT, "depth")
    colour = target_from_colour_box(depth, TIGHT_BOX, depth_camera=good, colour_camera=camera)
    assert colour.reason == f"{REASON_BAD_INTRINSICS}: colour camera: {found}"


def test_plausible_intrinsics_pass_at_the_edges_of_the_ranges() -> None:
    lo, hi = DEFAULT_FOCAL_RANGE_PX
    assert intrinsics_problem(k_with(fx=lo, fy=hi), (WIDTH, HEIGHT)) is None
    assert intrinsics_problem(k_with(cx=-WIDTH, cy=2 * HEIGHT), (WIDTH, HEIGHT)) is None, "a crop moves it out"
    assert intrinsics_problem(k_with(cx=1e9)) is None, "without a size the principal point is not checked"
    assert intrinsics_problem(k_with(fx=5.0, fy=6.0), focal_range=(1.0, 10.0)) is None
    assert DEFAULT_DEPTH_RANGE_M == (0.05, 20.0)


@pytest.mark.parametrize(
    "bounds", [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (1.0, 1.0), (0.1, math.inf), (math.nan, 1.0), (1.0,), "ab"]
)
def test_ranges_must_be_positive_finite_and_increasing(bounds: object) -> None:
    depth = np.ones((HEIGHT, WIDTH), np.float32)
    with pytest.raises(ValueError, match="depth_range"):
        target_from_box(depth, K_COLOUR, TIGHT_BOX, depth_range=bounds)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="focal_range"):
        target_from_box(depth, K_COLOUR, TIGHT_BOX, focal_range=bounds)  # type: ignore[arg-type]
    camera = CameraGeometry(K_COLOUR, WIDTH, HEIGHT)
    with pytest.raises(ValueError, match="focal_range"):
        target_from_colour_box(depth, TIGHT_BOX, depth_camera=camera, focal_range=bounds)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": np.zeros((4, 4, 3), np.float32)}, "2-D"),
        ({"depth": np.zeros((4, 4), np.int32)}, "depth_scale"),
        ({"depth": np.zeros((4, 4), bool), "depth_scale": 0.001}, "numeric"),
        ({"depth_scale": -0.001}, "depth_scale"),
        ({"margin": 0.5}, "margin"),
        ({"percentile": 101.0}, "percentile"),
        ({"box": (1.0, 2.0, float("nan"), 4.0)}, "box"),
        ({"box": (1.0, 2.0, 3.0)}, "box"),
        ({"K": np.eye(2)}, "3x3"),
        ({"band": 0.04, "bin_width": 0.025}, "band"),
        ({"min_mode_fraction": 0.0}, "min_mode_fraction"),
    ],
)
def test_bad_input_raises_value_error(kwargs: dict, message: str) -> None:
    args = {"depth": np.ones((HEIGHT, WIDTH), np.float32), "K": K_COLOUR, "box": TIGHT_BOX} | kwargs
    depth, k, box = args.pop("depth"), args.pop("K"), args.pop("box")
    with pytest.raises(ValueError, match=message):
        target_from_box(depth, k, box, **args)


def test_margin_excludes_the_box_edges_from_the_statistics(scene_m: np.ndarray) -> None:
    # Invalid pixels only in a ring 5 % wide around the box's edges: a 10 % margin never sees them.
    depth = encode(scene_m, "32FC1")
    x1, y1, x2, y2 = TIGHT_BOX
    w, h = x2 - x1, y2 - y1
    ring = np.zeros(depth.shape, bool)
    ring[int(y1) : int(math.ceil(y2)), int(x1) : int(math.ceil(x2))] = True
    ring[int(math.ceil(y1 + 0.05 * h)) : int(y2 - 0.05 * h), int(math.ceil(x1 + 0.05 * w)) : int(x2 - 0.05 * w)] = False
    depth[ring] = np.nan
    assert target_from_box(depth, K_COLOUR, TIGHT_BOX, margin=0.1).valid_fraction == 1.0
    assert target_from_box(depth, K_COLOUR, TIGHT_BOX, margin=0.0).valid_fraction < 0.85


def test_single_channel_3d_depth_is_accepted(scene_m: np.ndarray) -> None:
    depth = encode(scene_m, "16UC1")[:, :, None]
    assert error_m(target_from_box(depth, K_COLOUR, TIGHT_BOX)) < TOLERANCE_M


def test_camera_geometry_validates() -> None:
    assert CameraGeometry(K_COLOUR.ravel().tolist(), WIDTH, HEIGHT).K.shape == (3, 3)
    with pytest.raises(ValueError, match="size"):
        CameraGeometry(K_COLOUR, 0, HEIGHT)
    with pytest.raises(ValueError, match="3x3"):
        CameraGeometry(np.zeros(6), WIDTH, HEIGHT)


def test_invalid_target_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        Target.invalid("")
    target = Target.invalid(REASON_NO_DEPTH, valid_fraction=0.0)
    assert not target.valid and target.valid_fraction == 0.0 and math.isnan(target.depth_median)


# ------------------------------------------------------------------------------------------
# Box mapping between colour and depth images
# ------------------------------------------------------------------------------------------


def test_scale_box_by_size() -> None:
    assert scale_box((10, 20, 110, 220), (640, 480), (320, 240)) == pytest.approx((5, 10, 55, 110))
    assert scale_box((0, 0, 640, 480), (640, 480), (1280, 720)) == pytest.approx((0, 0, 1280, 720))
    with pytest.raises(ValueError, match="sizes"):
        scale_box((0, 0, 1, 1), (0, 480), (320, 240))


def test_intrinsics_mapping_matches_size_ratio_for_a_scaled_camera() -> None:
    box = (101.3, 57.9, 402.2, 300.4)
    k_half = scaled_intrinsics(K_COLOUR, 0.5)
    assert scale_box_with_intrinsics(box, K_COLOUR, k_half) == pytest.approx(scale_box(box, (640, 480), (320, 240)))
    there = scale_box_with_intrinsics(box, K_COLOUR, k_half)
    assert scale_box_with_intrinsics(there, k_half, K_COLOUR) == pytest.approx(box)


def test_intrinsics_mapping_preserves_rays_for_a_shifted_principal_point() -> None:
    # A depth camera with a different focal length and principal point (e.g. a crop): a size ratio
    # would be wrong, the ray through each corner must be the same.
    k_depth = np.array([[400.0, 0.0, 150.0], [0.0, 410.0, 130.0], [0.0, 0.0, 1.0]])
    box = (200.0, 100.0, 300.0, 180.0)
    mapped = scale_box_with_intrinsics(box, K_COLOUR, k_depth)
    for (u, v), (mu, mv) in zip([box[:2], box[2:]], [mapped[:2], mapped[2:]], strict=True):
        assert back_project(K_COLOUR, u, v, 1.0) == pytest.approx(back_project(k_depth, mu, mv, 1.0))
    with pytest.raises(ValueError, match="K_depth"):
        scale_box_with_intrinsics(box, K_COLOUR, np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------
# Foreground selection and approach orientation
# ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    object_depth=st.floats(0.3, 5.0),
    background_ratio=st.floats(1.2, 4.0),
    object_fraction=st.floats(0.2, 0.8),
    seed=st.integers(0, 2**16),
)
def test_foreground_interval_finds_the_nearer_dense_surface(
    object_depth: float, background_ratio: float, object_fraction: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    n_object = int(2000 * object_fraction)
    depths = np.concatenate(
        [
            rng.normal(object_depth, 0.003 * object_depth, n_object),
            rng.normal(object_depth * background_ratio, 0.003 * object_depth, 2000 - n_object),
        ]
    )
    lo, hi = foreground_interval(depths)
    assert lo < object_depth < hi
    assert hi < object_depth * background_ratio * 0.95


def test_foreground_interval_ignores_a_mode_below_the_threshold() -> None:
    depths = np.concatenate([np.full(100, 0.5), np.full(900, 2.0)])  # 10 % near
    lo, hi = foreground_interval(depths, min_mode_fraction=0.15)
    assert lo < 2.0 < hi
    lo, hi = foreground_interval(depths, min_mode_fraction=0.05)
    assert lo < 0.5 < hi
    with pytest.raises(ValueError, match="valid depths"):
        foreground_interval(np.array([0.8, 0.0, 0.9]))
    with pytest.raises(ValueError, match="at least one"):
        foreground_interval(np.array([]))


def test_approach_quaternion_straight_ahead_is_the_optical_to_body_rotation() -> None:
    q = approach_quaternion((0.0, 0.0, 1.3))
    assert rotate(q, np.array([1.0, 0, 0])) == pytest.approx([0, 0, 1], abs=1e-12)  # approach = forward
    assert rotate(q, np.array([0, 1.0, 0])) == pytest.approx([-1, 0, 0], abs=1e-12)  # left
    assert rotate(q, np.array([0, 0, 1.0])) == pytest.approx([0, -1, 0], abs=1e-12)  # up


@settings(max_examples=200, deadline=None)
@given(st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3)).filter(lambda p: np.linalg.norm(p) > 1e-3))
@example((1e-8, -1.0, 0.0))  # within rounding of the up axis
@example((0.0, 2.0, 1e-7))
def test_approach_quaternion_points_x_along_the_ray_with_up_kept(point: tuple[float, float, float]) -> None:
    q = approach_quaternion(point)
    ray = np.asarray(point) / np.linalg.norm(point)
    up = np.array([0.0, -1.0, 0.0])
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-12)
    assert q[3] >= 0.0  # one deterministic sign of the two equivalent quaternions
    assert rotate(q, np.array([1.0, 0, 0])) == pytest.approx(ray, abs=1e-9)
    z_axis = rotate(q, np.array([0, 0, 1.0]))
    assert abs(np.dot(z_axis, ray)) < 1e-9
    best_up = math.sqrt(max(0.0, 1.0 - np.dot(up, ray) ** 2))  # largest up-component a perpendicular can have
    if best_up > 1e-6:
        assert np.dot(z_axis, up) == pytest.approx(best_up, abs=1e-9)


def test_approach_quaternion_ray_along_vertical_and_bad_points() -> None:
    q = approach_quaternion((0.0, -2.0, 0.0))  # straight up: roll falls back to forward
    assert rotate(q, np.array([1.0, 0, 0])) == pytest.approx([0, -1, 0], abs=1e-12)
    assert rotate(q, np.array([0, 0, 1.0])) == pytest.approx([0, 0, 1], abs=1e-12)
    for bad in [(0.0, 0.0, 0.0), (float("nan"), 0.0, 1.0), (1.0, 2.0)]:
        with pytest.raises(ValueError, match="point"):
            approach_quaternion(bad)


def test_target_orientation_follows_its_point(scene_m: np.ndarray) -> None:
    target = target_from_box(encode(scene_m, "32FC1"), K_COLOUR, TIGHT_BOX)
    assert target.approach_orientation == approach_quaternion(target.point)
    assert all(math.isnan(c) for c in Target.invalid(REASON_NO_DEPTH).approach_orientation)
