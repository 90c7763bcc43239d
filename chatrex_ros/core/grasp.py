"""Grasp targeting geometry: a detection box + a depth image -> a 3-D point in the optical frame.

ROS-free (numpy only) so that scripts, the offline evaluation and the grasp node share one
implementation; the node only converts messages (Image -> array, CameraInfo -> ``CameraGeometry``).

Conventions (each one is a place where a silent mismatch would move the target):

* Depth units follow REP 118: ``uint16`` (16UC1) is millimetres, ``float32`` (32FC1) is metres;
  ``depth_scale`` (metres per unit) overrides both. 0, NaN, +-inf and negative values mean "no depth", and
  so does a depth outside the plausible ``depth_range`` (a target at the lens or a kilometre away is a
  sensor or publisher fault, not an object to reach for).
* Intrinsics must be plausible, not only well-formed: focal lengths within ``focal_range`` and the
  principal point near the image (``intrinsics_problem``); otherwise every target is refused with why.
  Depth is the z coordinate in the optical frame (not the length of the ray), as REP 118 specifies.
* Images are assumed rectified: K of ``sensor_msgs/CameraInfo`` is used and distortion is ignored.
* Boxes use the continuous pixel convention of the detectors (the image spans ``[0, W] x [0, H]``;
  pixel column ``c`` covers ``[c, c + 1)``). K uses the OpenCV/ROS convention where the CENTRE of
  pixel ``c`` is at ``c``. The half-pixel shift between the two is applied when back-projecting and
  when mapping boxes between cameras; ``Target.pixel`` is reported in the box convention.
* The point is on the visible surface of the object (what the depth camera sees), in metres, in the
  depth image's optical frame (REP 103: x right, y down, z forward).
* The grasp frame (``Target.approach_orientation``, the extent's axes): +X is the approach direction (the camera
  ray to the point, or into the fitted surface: ``approach``), +Z as close to the camera's up (optical -Y) as
  +X allows. The surface normal points towards the camera. See :mod:`chatrex_ros.core.grasp_surface`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chatrex_ros.core.grasp_surface import (
    APPROACHES,
    DEFAULT_MIN_SURFACE_POINTS,
    DEFAULT_PLANE_TOLERANCE,
    DEFAULT_SURFACE_RADIUS_M,
    Extent,
    fit_surface,
    foreground_points,
    object_extent,
    without_support,
)
from chatrex_ros.core.rotations import quaternion_from_matrix

REASON_NO_DETECTION = "no detection"
REASON_NO_DEPTH = "no valid depth"
REASON_OUTSIDE = "box outside image"
REASON_BAD_INTRINSICS = "invalid camera intrinsics"
REASON_NO_CAMERA_INFO = "no camera_info"
REASON_FRAME_MISMATCH = "depth and camera_info frames differ"
REASON_STALE = "no depth image within tolerance"
REASON_SIZE_MISMATCH = "depth image size differs from camera_info"
REASON_DEPTH_RANGE = "no depth within the plausible range"

DEFAULT_DEPTH_RANGE_M = (0.05, 20.0)
"""Depths (metres) a target may have: nearer is at the lens, farther is beyond any arm and most depth sensors."""
DEFAULT_FOCAL_RANGE_PX = (10.0, 100_000.0)
"""Focal lengths (pixels) a rectified camera may have: 10 px is a ~176 deg view of a 640 px image, 100000 px a
long telephoto on a 16k sensor. Outside it, K is a fault (fx = 1e-3 puts a 1 m object kilometres sideways)."""
PRINCIPAL_POINT_MARGIN = 1.0
"""How far (in image widths/heights) the principal point may lie beyond the image edges (crops move it out)."""

MILLIMETRE = 0.001
"""Metres per unit of a 16UC1 depth image (REP 118)."""

_MIN_EXTENT_POINTS = 10
"""Fewer foreground points give no extent: width_m / height_m are then the box back-projected."""

_NAN = float("nan")

Box = Sequence[float]


@dataclass(frozen=True)
class Target:
    """Where to reach for a referred object, and how much to trust it.

    point: (x, y, z) metres in the depth optical frame; z is the chosen percentile of the used depths
        (the median by default). NaN when not valid.
    depth_median / depth_spread: median and interquartile range (p75 - p25, metres) of the depths used,
        i.e. the foreground pixels of the shrunk box. The IQR is robust to the flying pixels at object
        edges that would dominate a standard deviation; a large spread means a slanted or mixed surface.
    valid_fraction: share of the shrunk box's pixels with valid depth (0..1).
    width_m / height_m: the object's visible extent across the approach axis, horizontal-ish (the grasp
        frame's y) and vertical-ish (z), from its points: what a gripper's opening is checked against. With
        too few points, the box's size back-projected at the target depth.
    pixel: (u, v) back-projected, in the depth image, box pixel convention (see module docstring).
    normal: unit normal of the surface around the point, towards the camera; NaN when no plane fitted.
    approach: unit +X of the grasp frame (``approach_source`` says which: camera_ray or surface_normal).
    note: a remark on a valid target, e.g. why ``surface_normal`` fell back to the camera ray ('' if none).
    fit_inlier_fraction / fit_rms_m / fit_points: the plane fit's quality (see ``SurfaceFit``).
    extent: the object's visible extent as an oriented box (None when not valid).
    points / mask / mask_origin: the foreground points (N, 3) and their mask in the depth image crop whose
        top-left pixel is ``mask_origin`` (col, row); only kept when asked for (``keep_points``).
    Fields that could not be computed are NaN.
    """

    point: tuple[float, float, float] = (_NAN, _NAN, _NAN)
    valid: bool = False
    reason: str = ""
    depth_median: float = _NAN
    depth_spread: float = _NAN
    valid_fraction: float = _NAN
    width_m: float = _NAN
    height_m: float = _NAN
    pixel: tuple[float, float] = (_NAN, _NAN)
    normal: tuple[float, float, float] = (_NAN, _NAN, _NAN)
    approach: tuple[float, float, float] = (_NAN, _NAN, _NAN)
    approach_source: str = ""
    note: str = ""
    fit_inlier_fraction: float = _NAN
    fit_rms_m: float = _NAN
    fit_points: int = 0
    extent: Extent | None = None
    points: np.ndarray | None = field(default=None, compare=False, repr=False)
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    mask_origin: tuple[int, int] = (0, 0)

    @classmethod
    def invalid(cls, reason: str, **stats: float) -> Target:
        """An invalid target with ``reason`` (use the REASON_* constants) and whatever stats are known."""
        if not reason:
            raise ValueError("an invalid Target needs a non-empty reason")
        return cls(valid=False, reason=reason, **stats)  # type: ignore[arg-type]  # float statistics only

    @property
    def approach_orientation(self) -> tuple[float, float, float, float]:
        """The grasp frame as a quaternion for the PoseStamped (+X along ``approach``); NaN when not valid."""
        if not self.valid:
            return (_NAN, _NAN, _NAN, _NAN)
        return approach_quaternion(self.approach)


@dataclass(frozen=True, eq=False)
class CameraGeometry:
    """The parts of a ``sensor_msgs/CameraInfo`` the geometry needs: K (3x3), image size, frame.

    K may be given as CameraInfo's flat 9 values; it is stored as a 3x3 float64 array.
    """

    K: np.ndarray
    width: int
    height: int
    frame_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", _as_matrix(self.K))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera image size must be positive, got {self.width}x{self.height}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return (int(self.width), int(self.height))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def target_from_box(
    depth: np.ndarray,
    K: np.ndarray,
    box: Box,
    *,
    depth_scale: float | None = None,
    margin: float = 0.1,
    percentile: float = 50.0,
    foreground: bool = True,
    min_mode_fraction: float = 0.15,
    bin_width: float = 0.025,
    band: float = 0.05,
    depth_range: tuple[float, float] = DEFAULT_DEPTH_RANGE_M,
    focal_range: tuple[float, float] = DEFAULT_FOCAL_RANGE_PX,
    approach: str = "camera_ray",
    surface_radius_m: float = DEFAULT_SURFACE_RADIUS_M,
    min_surface_points: int = DEFAULT_MIN_SURFACE_POINTS,
    plane_tolerance: float = DEFAULT_PLANE_TOLERANCE,
    keep_points: bool = False,
) -> Target:
    """Robust 3-D target for ``box`` (x1, y1, x2, y2 in DEPTH-image pixels).

    Pre-process: clip the box to the image, shrink it by ``margin`` (fraction of its width/height
    removed on EACH side: box edges hold mixed foreground/background pixels), convert to metres.
    Infer: with ``foreground`` pick the nearest dense depth mode (see ``foreground_interval``) because
    a detection box around a small object is often mostly far background, where a plain median would
    return the wall; take the ``percentile`` of the depths in that mode's band.
    Decode: back-project through K at the foreground footprint's centroid (over the whole clipped box,
    since shrinking would pull it toward the box centre when the object fills only part of the box);
    without ``foreground`` the box centre and all valid pixels are used.

    ``bin_width`` and ``band`` are relative to depth (0.025 -> 2.5 cm bins at 1 m, the band is
    mode * (1 -+ band), band >= 2 * bin_width); ``min_mode_fraction`` is the share of valid pixels a
    mode needs to count. Depths outside ``depth_range`` (metres, inclusive) are not valid depth; when the
    box has depth but none in range the target is refused (``REASON_DEPTH_RANGE``). K must pass
    ``intrinsics_problem`` with ``focal_range`` for the depth image's size (else ``REASON_BAD_INTRINSICS``).

    Surface: the foreground points of the clipped box give the plane around the point (``surface_radius_m``,
    ``min_surface_points``, ``plane_tolerance``: :func:`~chatrex_ros.core.grasp_surface.fit_surface`) and the
    extent. ``approach`` is ``camera_ray`` or ``surface_normal`` (-normal; the camera ray, with a ``note`` saying
    why, when no plane fits). ``keep_points`` keeps the points and their mask on the Target.
    """
    if approach not in APPROACHES:
        raise ValueError(f"approach must be one of {', '.join(APPROACHES)}, got {approach!r}")
    if margin < 0.0 or margin >= 0.5 or not math.isfinite(margin):
        raise ValueError(f"margin must be in [0, 0.5) (fraction removed per side), got {margin}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    _check_foreground_params(min_mode_fraction, bin_width, band)
    min_depth, max_depth = check_range("depth_range", depth_range)
    check_range("focal_range", focal_range)
    depth = _as_depth_image(depth)
    scale = _depth_scale_for(depth.dtype, depth_scale)
    k = _as_matrix(K)
    height, width = depth.shape
    problem = intrinsics_problem(k, (width, height), focal_range)
    if problem is not None:
        return Target.invalid(f"{REASON_BAD_INTRINSICS}: {problem}")
    x1, y1, x2, y2 = _as_box(box)

    # --- pre-process: clip, shrink, crop, convert ---
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        return Target.invalid(REASON_OUTSIDE)
    c0, c1 = _pixel_span(cx1, cx2)
    r0, r1 = _pixel_span(cy1, cy2)
    mx, my = margin * (cx2 - cx1), margin * (cy2 - cy1)
    s0, s1 = _pixel_span(cx1 + mx, cx2 - mx)
    t0, t1 = _pixel_span(cy1 + my, cy2 - my)
    metres = _to_metres(depth[r0:r1, c0:c1], scale)
    inner = metres[t0 - r0 : t1 - r0, s0 - c0 : s1 - c0]
    with_depth = inner[np.isfinite(inner) & (inner > 0.0)]
    if with_depth.size == 0:
        return Target.invalid(REASON_NO_DEPTH, valid_fraction=0.0)
    inner_valid = with_depth[(with_depth >= min_depth) & (with_depth <= max_depth)]
    valid_fraction = inner_valid.size / inner.size
    if inner_valid.size == 0:
        median_m = float(np.median(with_depth.astype(np.float64)))  # float32 overflows near its max
        return Target.invalid(
            f"{REASON_DEPTH_RANGE} ({min_depth:g}..{max_depth:g} m): the box's {with_depth.size} pixels with depth"
            f" have a median of {median_m:.3g} m",
            valid_fraction=0.0,
        )

    # --- infer: foreground depth statistics ---
    if foreground:
        lo, hi = _foreground_interval(inner_valid, min_mode_fraction, bin_width, band)
        used = inner_valid[(inner_valid >= lo) & (inner_valid <= hi)]
    else:
        used = inner_valid
    p25, median, p75, z = (float(v) for v in np.percentile(used, [25.0, 50.0, 75.0, percentile]))

    # --- decode: pixel, back-projection, surface, extent ---
    if foreground:
        u, v = _footprint_centroid(metres, lo, hi, c0, r0)
    else:
        lo, hi = float(used.min()), float(used.max())
        u, v = 0.5 * (cx1 + cx2), 0.5 * (cy1 + cy2)
    point = back_project(k, u, v, z)
    points, mask = foreground_points(metres, lo, hi, k, c0, r0)
    border = metres.copy()
    border[t0 - r0 : t1 - r0, s0 - c0 : s1 - c0] = np.nan  # the trimmed margin: what surrounds the object
    border_points, _ = foreground_points(border, min_depth, max_depth, k, c0, r0)
    points, mask, _ = without_support(points, mask, border_points, tolerance=plane_tolerance)
    fit, why_no_fit = fit_surface(
        points, np.array(point), radius_m=surface_radius_m, min_points=min_surface_points, tolerance=plane_tolerance
    )
    ray = np.array(point) / np.linalg.norm(point)
    direction, source, note = ray, "camera_ray", ""
    if approach == "surface_normal":
        if fit is not None:
            direction, source = -np.array(fit.normal), "surface_normal"
        else:
            note = f"surface_normal fell back to camera_ray: {why_no_fit}"
    axes = approach_axes(direction)
    width_m, height_m = (cx2 - cx1) * z / float(k[0, 0]), (cy2 - cy1) * z / float(k[1, 1])
    extent = None
    if points.shape[0] >= _MIN_EXTENT_POINTS:
        extent = object_extent(points, axes, pixel_m=z / float(k[0, 0]))
        width_m, height_m = extent.size[1], extent.size[2]
    return Target(
        point=point,
        valid=True,
        reason="",
        depth_median=median,
        depth_spread=p75 - p25,
        valid_fraction=valid_fraction,
        width_m=width_m,
        height_m=height_m,
        pixel=(u, v),
        normal=fit.normal if fit is not None else (_NAN, _NAN, _NAN),
        approach=(float(direction[0]), float(direction[1]), float(direction[2])),
        approach_source=source,
        note=note,
        fit_inlier_fraction=fit.inlier_fraction if fit is not None else _NAN,
        fit_rms_m=fit.rms_m if fit is not None else _NAN,
        fit_points=fit.points if fit is not None else 0,
        extent=extent,
        points=points if keep_points else None,
        mask=mask if keep_points else None,
        mask_origin=(c0, r0),
    )


def target_from_colour_box(
    depth: np.ndarray,
    box: Box | None,
    *,
    depth_camera: CameraGeometry | None,
    colour_camera: CameraGeometry | None = None,
    colour_size: tuple[int, int] | None = None,
    depth_frame_id: str | None = None,
    focal_range: tuple[float, float] = DEFAULT_FOCAL_RANGE_PX,
    **options: Any,
) -> Target:
    """What the grasp node calls: a box in COLOUR pixels, the depth image and its camera_info.

    The box is mapped to depth pixels through both cameras' intrinsics when ``colour_camera`` is
    given (``scale_box_with_intrinsics``), else by the image size ratio when ``colour_size`` (w, h)
    is given, else it is taken as already in depth pixels. The intrinsics mapping is exact for
    registered images (depth aligned to colour, or one sensor at two resolutions); unregistered
    depth adds parallax (baseline * fx / depth pixels) that only extrinsics could remove.
    Refusals come back as invalid Targets with the REASON_* constants so the node can publish them
    (implausible intrinsics of either camera: ``REASON_BAD_INTRINSICS`` and what is wrong with them).
    ``options`` are ``target_from_box``'s other keyword parameters (``depth_range`` among them).
    """
    if box is None:
        return Target.invalid(REASON_NO_DETECTION)
    if depth_camera is None:
        return Target.invalid(REASON_NO_CAMERA_INFO)
    if depth_frame_id is not None and _frame(depth_frame_id) != _frame(depth_camera.frame_id):
        return Target.invalid(REASON_FRAME_MISMATCH)
    depth = _as_depth_image(depth)
    if (depth.shape[1], depth.shape[0]) != depth_camera.size:
        return Target.invalid(REASON_SIZE_MISMATCH)
    check_range("focal_range", focal_range)
    problem = intrinsics_problem(depth_camera.K, depth_camera.size, focal_range)
    if problem is not None:
        return Target.invalid(f"{REASON_BAD_INTRINSICS}: depth camera: {problem}")
    if colour_camera is not None:
        problem = intrinsics_problem(colour_camera.K, colour_camera.size, focal_range)
        if problem is not None:
            return Target.invalid(f"{REASON_BAD_INTRINSICS}: colour camera: {problem}")
        box = scale_box_with_intrinsics(box, colour_camera.K, depth_camera.K)
    elif colour_size is not None:
        box = scale_box(box, colour_size, depth_camera.size)
    return target_from_box(depth, depth_camera.K, box, focal_range=focal_range, **options)


def foreground_interval(
    depths: np.ndarray,
    *,
    min_mode_fraction: float = 0.15,
    bin_width: float = 0.025,
    band: float = 0.05,
) -> tuple[float, float]:
    """Depth interval (lo, hi) in metres of the NEAREST dense depth mode of ``depths`` (valid, > 0).

    Histogram in log-depth, so bins are ``bin_width`` relative (depth noise grows with depth); each
    bin's mass includes its two neighbours so a mode split by a bin edge still counts whole. The first
    bin (nearest) whose mass reaches ``min_mode_fraction`` of the pixels starts a dense run (consecutive
    bins at or above it); the run's peak is the mode. Nearer sparse pixels (flying pixels, noise) are
    skipped by the threshold; the far background loses because the object in front is nearer. The
    interval is mode * (1 -+ band), widened to the whole dense run so that a slanted object deeper
    than the band is kept whole (a depth gap, or sparse bins, still separate it from the background).
    With no dense bin (e.g. a long floor ramp) the densest bin is the mode and the band alone is used.
    """
    _check_foreground_params(min_mode_fraction, bin_width, band)
    values = np.asarray(depths, dtype=np.float32).ravel()
    if values.size == 0:
        raise ValueError("foreground_interval needs at least one depth value")
    if not np.all(np.isfinite(values) & (values > 0.0)):
        raise ValueError("foreground_interval needs valid depths only (finite, > 0): filter 0/NaN/inf first")
    return _foreground_interval(values, min_mode_fraction, bin_width, band)


def _foreground_interval(
    values: np.ndarray, min_mode_fraction: float, bin_width: float, band: float
) -> tuple[float, float]:
    """``foreground_interval`` on already checked, valid float32 depths (the hot path)."""
    step = math.log1p(bin_width)
    bins = np.floor(np.log(values) / step).astype(np.int64)
    first = int(bins.min())
    counts = np.bincount(bins - first)
    mass = np.convolve(counts, np.ones(3, dtype=np.int64), mode="same")
    dense = np.flatnonzero(mass >= min_mode_fraction * values.size)
    if dense.size:
        start = int(dense[0])
        gaps = np.flatnonzero(mass[start:] < min_mode_fraction * values.size)
        stop = start + int(gaps[0]) if gaps.size else mass.size
        peak = start + int(np.argmax(mass[start:stop]))
    else:
        start = stop = peak = int(np.argmax(mass))
    # Mass-weighted centre of the peak's three bins: finer than one bin.
    lo_bin, hi_bin = max(peak - 1, 0), min(peak + 2, counts.size)
    weights = counts[lo_bin:hi_bin]
    centre_bin = float(np.dot(np.arange(lo_bin, hi_bin) + 0.5, weights) / weights.sum())
    mode = math.exp((centre_bin + first) * step)
    # A slanted object fills a run of dense bins wider than the band: keep all of it.
    run_lo, run_hi = math.exp((start + first) * step), math.exp((stop + first) * step)
    return (min(mode * (1.0 - band), run_lo), max(mode * (1.0 + band), run_hi))


def back_project(K: np.ndarray, u: float, v: float, z: float) -> tuple[float, float, float]:
    """Point at depth ``z`` (metres, optical z) on the ray through (u, v) in the BOX pixel convention."""
    k = _as_matrix(K)
    yn = (v - 0.5 - k[1, 2]) / k[1, 1]
    xn = (u - 0.5 - k[0, 2] - k[0, 1] * yn) / k[0, 0]
    return (float(xn * z), float(yn * z), float(z))


def scale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Map a box between two images of the same view by their size ratio; sizes are (width, height).

    Exact in the continuous box convention (the image spans [0, W]); use it when only the image sizes
    are known. With both camera_infos prefer ``scale_box_with_intrinsics``.
    """
    (fw, fh), (tw, th) = from_size, to_size
    if min(fw, fh, tw, th) <= 0:
        raise ValueError(f"image sizes must be positive (width, height), got {from_size} -> {to_size}")
    x1, y1, x2, y2 = _as_box(box)
    sx, sy = tw / fw, th / fh
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def scale_box_with_intrinsics(box: Box, K_colour: np.ndarray, K_depth: np.ndarray) -> tuple[float, float, float, float]:
    """Map a colour-image box to depth pixels: pixel -> normalised ray (K_colour) -> pixel (K_depth).

    This is what "scaled by the camera_info of each" means for registered images: it also handles a
    different principal point or crop, which a size ratio cannot. With skew the mapped corners are
    not axis-aligned; their bounding box is returned.
    """
    kc, kd = _as_matrix(K_colour), _as_matrix(K_depth)
    for name, k in (("K_colour", kc), ("K_depth", kd)):
        if not intrinsics_valid(k):
            raise ValueError(
                f"{name} is not valid camera intrinsics (finite, positive focal lengths, last row 0 0 1): {k.tolist()}"
            )
    x1, y1, x2, y2 = _as_box(box)
    corners = np.array([[x1, y1, 1.0], [x2, y1, 1.0], [x1, y2, 1.0], [x2, y2, 1.0]])
    corners[:, :2] -= 0.5  # box convention -> K convention
    mapped = corners @ (kd @ np.linalg.inv(kc)).T
    mapped = mapped[:, :2] / mapped[:, 2:3] + 0.5
    (mx1, my1), (mx2, my2) = mapped.min(axis=0), mapped.max(axis=0)
    return (float(mx1), float(my1), float(mx2), float(my2))


def approach_quaternion(point: Sequence[float]) -> tuple[float, float, float, float]:
    """Orientation (x, y, z, w) in the optical frame whose +X axis points along the ray to ``point``.

    Convention: +X is the gripper's approach axis (REP 103 body axes: x forward, y left, z up), so a
    planner can use the pose as "approach from the camera". Roll is fixed by keeping +Z as close as
    possible to the camera's up (-Y of the optical frame); for a point straight ahead this gives
    x = optical z, y = -optical x, z = -optical y (the usual optical -> body rotation). For a ray
    along +-Y (no up direction left) the optical +Z (forward) is used as "up" instead.
    """
    return quaternion_from_matrix(approach_axes(point))


def approach_axes(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """The grasp frame for an approach along ``direction`` (any non-zero vector) as a 3x3 matrix of unit columns.

    Columns x, y, z: x along ``direction``, z as close to the camera's up (optical -Y) as possible, y = z x x;
    see :func:`approach_quaternion`, whose rotation this is.
    """
    p = np.asarray(direction, dtype=np.float64).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"point must be 3 finite numbers, got {direction!r}")
    norm = float(np.linalg.norm(p))
    if norm == 0.0:
        raise ValueError("point must not be the camera origin: the ray direction is undefined")
    x_axis = p / norm
    z_axis = _perpendicular_toward(np.array([0.0, -1.0, 0.0]), x_axis)
    if z_axis is None:
        z_axis = _perpendicular_toward(np.array([0.0, 0.0, 1.0]), x_axis)
    assert z_axis is not None, "a unit axis cannot be parallel to both -Y and +Z"
    y_axis = np.cross(z_axis, x_axis)
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)  # re-orthogonalised: the quaternion formula needs an exact rotation
    return np.column_stack([x_axis, y_axis, z_axis])


def intrinsics_valid(K: np.ndarray) -> bool:
    """True when K is well-formed: finite, fx and fy > 0, last row (0, 0, 1). An all-zero K means uncalibrated.

    Well-formed is not plausible: ``intrinsics_problem`` also bounds the focal lengths and principal point.
    """
    k = _as_matrix(K)
    return bool(
        np.all(np.isfinite(k))
        and k[0, 0] > 0.0
        and k[1, 1] > 0.0
        and k[1, 0] == 0.0
        and np.allclose(k[2], (0.0, 0.0, 1.0))
    )


def intrinsics_problem(
    K: np.ndarray,
    size: tuple[int, int] | None = None,
    focal_range: tuple[float, float] = DEFAULT_FOCAL_RANGE_PX,
) -> str | None:
    """Why K cannot be used as the intrinsics of an image of ``size`` (width, height); None when it can.

    K must be well-formed (``intrinsics_valid``), fx and fy within ``focal_range`` (pixels, inclusive) and,
    when ``size`` is given, the principal point at most ``PRINCIPAL_POINT_MARGIN`` image sizes beyond the
    image's edges (cx in [-W, 2W], cy in [-H, 2H]).
    """
    lo, hi = check_range("focal_range", focal_range)
    k = _as_matrix(K)
    if not np.all(np.isfinite(k)):
        return "K has non-finite values"
    if not np.any(k):
        return "K is all zero (an uncalibrated camera)"
    if k[1, 0] != 0.0 or not np.allclose(k[2], (0.0, 0.0, 1.0)):
        return "K is not a camera matrix (its last row must be 0 0 1 and K[1][0] 0)"
    for name, focal in (("fx", float(k[0, 0])), ("fy", float(k[1, 1]))):
        if not lo <= focal <= hi:
            return f"{name} = {focal:g} px is outside the plausible focal length range {lo:g}..{hi:g} px"
    if size is not None:
        for name, centre, extent in (("cx", float(k[0, 2]), size[0]), ("cy", float(k[1, 2]), size[1])):
            margin = PRINCIPAL_POINT_MARGIN * extent
            if not -margin <= centre <= extent + margin:
                return (
                    f"{name} = {centre:g} px is far outside the image ({extent} px; allowed "
                    f"{-margin:g}..{extent + margin:g} px)"
                )
    return None


def check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    """``bounds`` as (lo, hi) floats; ValueError unless both are finite and 0 < lo < hi."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (min, max), got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise ValueError(f"{name} must be finite with 0 < min < max, got {bounds!r}")
    return lo, hi


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_matrix(K: np.ndarray) -> np.ndarray:
    """3x3 float64 from a 3x3 array or CameraInfo's flat 9-vector."""
    k = np.asarray(K, dtype=np.float64)
    if k.size != 9:
        raise ValueError(f"K must be a 3x3 matrix (or CameraInfo's 9 values), got shape {k.shape}")
    return k.reshape(3, 3)


def _as_depth_image(depth: np.ndarray) -> np.ndarray:
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty 2-D array (H, W), got shape {depth.shape}")
    return depth


def _depth_scale_for(dtype: np.dtype, depth_scale: float | None) -> float:
    """Metres per unit: ``depth_scale`` if given, else REP 118 (uint16 mm, float metres)."""
    if depth_scale is not None:
        if not (math.isfinite(depth_scale) and depth_scale > 0.0):
            raise ValueError(f"depth_scale must be a positive number of metres per unit, got {depth_scale}")
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ValueError(f"depth must be numeric, got dtype {dtype}")
        return float(depth_scale)
    if dtype == np.uint16:
        return MILLIMETRE
    if np.issubdtype(dtype, np.floating):
        return 1.0
    raise ValueError(
        f"depth dtype {dtype} has no default unit (REP 118: uint16 = millimetres, float32 = metres); "
        "pass depth_scale (metres per unit)"
    )


def _to_metres(crop: np.ndarray, scale: float) -> np.ndarray:
    """float32 metres; invalid pixels stay 0 / NaN / inf / negative and are filtered by the callers."""
    metres = crop.astype(np.float32)
    if scale != 1.0:
        metres *= np.float32(scale)
    return metres


def _as_box(box: Box) -> tuple[float, float, float, float]:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise ValueError(f"box must be 4 finite numbers x1, y1, x2, y2, got {box!r}")
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _pixel_span(start: float, stop: float) -> tuple[int, int]:
    """Index range of the pixels a continuous interval touches (at least one pixel)."""
    first = int(math.floor(start))
    return first, max(int(math.ceil(stop)), first + 1)


def _footprint_centroid(metres: np.ndarray, lo: float, hi: float, col0: int, row0: int) -> tuple[float, float]:
    """Centroid (box convention) of the pixels whose depth lies in [lo, hi]."""
    inside = (metres >= lo) & (metres <= hi)
    per_col = np.count_nonzero(inside, axis=0)
    per_row = np.count_nonzero(inside, axis=1)
    total = per_col.sum()
    u = col0 + 0.5 + float(np.dot(np.arange(per_col.size), per_col)) / float(total)
    v = row0 + 0.5 + float(np.dot(np.arange(per_row.size), per_row)) / float(total)
    return float(u), float(v)


def _check_foreground_params(min_mode_fraction: float, bin_width: float, band: float) -> None:
    if not 0.0 < min_mode_fraction <= 1.0:
        raise ValueError(f"min_mode_fraction must be in (0, 1], got {min_mode_fraction}")
    if not 0.0 < bin_width < 1.0:
        raise ValueError(f"bin_width must be in (0, 1) (relative to depth), got {bin_width}")
    if not 2.0 * bin_width <= band < 1.0:
        raise ValueError(
            f"band must be in [2 * bin_width, 1) so it covers the mode's three bins, "
            f"got band={band}, bin_width={bin_width}"
        )


def _frame(frame_id: str) -> str:
    """tf2 frame ids have no leading slash; ROS 1 era ids may."""
    return frame_id.lstrip("/")


def _perpendicular_toward(reference: np.ndarray, axis: np.ndarray) -> np.ndarray | None:
    """Unit vector perpendicular to ``axis`` closest to ``reference``; None when they are parallel."""
    projected = reference - np.dot(reference, axis) * axis
    norm = float(np.linalg.norm(projected))
    if norm < 1e-6:  # nearly parallel: the projection is mostly rounding error
        return None
    unit: np.ndarray = projected / norm
    return unit
