"""The object behind a grasp target: its 3-D points, visible surface normal and extent (ROS-free, numpy only).

:func:`~chatrex_ros.core.grasp.target_from_box` finds the object's depth band and the target point; this module
turns the same foreground pixels into what a pick pipeline asks for:

* **points**: the foreground pixels of the box back-projected through K (metres, optical frame), the input of
  GPD or Contact-GraspNet, and their mask in the depth image;
* **surface normal**: a robust plane fit (RANSAC, then least squares on the inliers) to the points within
  ``radius`` of the target, so the face the target lies on decides, not the whole object; the normal points
  towards the camera;
* **extent**: the object's visible size along the axes of the grasp frame (robust percentiles of the points),
  as a box with centre, size and orientation, for a collision object or a gripper-width check.

All in the depth image's optical frame (REP 103: x right, y down, z forward). Deterministic: the same depth image
gives the same numbers (the RANSAC samples come from a fixed seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chatrex_ros.core.rotations import quaternion_from_matrix

APPROACHES = ("camera_ray", "surface_normal")
"""How the grasp pose's approach axis (+X) is chosen: along the camera ray to the target, or into the surface."""

DEFAULT_SURFACE_RADIUS_M = 0.03
"""Points within this distance of the target form the surface patch the normal is fitted to."""
DEFAULT_MIN_SURFACE_POINTS = 30
"""Fewer patch points than this: no normal (the approach falls back to the camera ray, saying why)."""
DEFAULT_PLANE_TOLERANCE = 0.01
"""A point is on the fitted plane within this fraction of its depth (1 cm at 1 m): depth noise grows with range."""
MIN_INLIER_FRACTION = 0.5
"""A plane that explains fewer of the patch's points is no surface (a corner, an edge, noise): no normal."""
MIN_SPAN_TO_NOISE = 2.0
"""The inliers must spread across the fitted plane, in its narrower direction, at least this many times as far
as they scatter off it: a patch narrower than its depth noise (a thin rod's face) fits a plane along the camera
rays as well as its face, and that normal would point sideways."""
MAX_VIEW_ANGLE_DEG = 80.0
"""A visible face is seen within this angle of the camera ray; a plane seen beyond it is a fit along the rays."""
EXTENT_PERCENTILES = (0.5, 99.5)
"""The extent spans these percentiles of the points along each axis: a few flying pixels do not stretch it."""
MIN_OBJECT_SHARE = 0.2
"""A support plane is removed only if at least this share of the foreground points is in front of it."""

_RANSAC_ITERATIONS = 64
_RANSAC_SAMPLE = 1024
"""Points the RANSAC step scores candidates on (a strided subset); the refinement uses every patch point."""
_ROLL_SAMPLE = 256
"""Points the roll of the extent box is searched on (a strided subset: only the angle comes from it)."""
_EXTENT_SAMPLE = 4096
"""Points the extent's percentiles are taken over (a strided subset of a large box: the same percentiles)."""
_SEED = 20241127


@dataclass(frozen=True)
class SurfaceFit:
    """A plane fitted to the visible surface around the target.

    normal: unit vector, pointing towards the camera (``normal . point < 0``).
    inlier_fraction: share of the patch's points within the tolerance of the plane (0..1).
    rms_m: root-mean-square distance of the inliers to the plane, metres.
    points: how many patch points the fit saw.
    """

    normal: tuple[float, float, float]
    inlier_fraction: float
    rms_m: float
    points: int


@dataclass(frozen=True)
class Extent:
    """The object's visible extent as an oriented box in the optical frame.

    centre: metres. size: (along x, along y, along z) of the box axes, metres. orientation: (x, y, z, w) of the
    box axes: x is the grasp pose's approach axis, y and z the grasp pose's rolled about it to fit the object
    tightest (:func:`object_extent`).
    """

    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    orientation: tuple[float, float, float, float]


def foreground_points(
    metres: np.ndarray, lo: float, hi: float, K: np.ndarray, col0: int, row0: int
) -> tuple[np.ndarray, np.ndarray]:
    """((N, 3) float64 points, (h, w) bool mask) of the crop's pixels whose depth lies in [lo, hi].

    ``metres`` is the crop of the depth image (metres) whose top-left pixel is (``col0``, ``row0``); the points
    are those pixels' centres back-projected through ``K`` (OpenCV convention: pixel centre c is at c).
    """
    mask = (metres >= lo) & (metres <= hi)
    rows, cols = np.nonzero(mask)
    z = metres[rows, cols].astype(np.float64)
    k = np.asarray(K, dtype=np.float64).reshape(3, 3)
    yn = (rows + row0 - k[1, 2]) / k[1, 1]
    xn = (cols + col0 - k[0, 2] - k[0, 1] * yn) / k[0, 0]
    return np.column_stack([xn * z, yn * z, z]), mask


def without_support(
    points: np.ndarray, mask: np.ndarray, border: np.ndarray, *, tolerance: float = DEFAULT_PLANE_TOLERANCE
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(points, mask, removed): the object's points without the plane it stands on or lies against.

    A detection box's border (the margin ``target_from_box`` trims) mostly shows what surrounds the object: a
    table under it seen at an angle, a wall behind it. When most ``border`` points lie on one plane, every
    point on that plane or behind it is removed: the table in the box's corners would otherwise widen the
    extent and tilt the normal. Kept as it is when the border shows no plane, or when removing it would leave
    less than :data:`MIN_OBJECT_SHARE` of the points (the "plane" was the object itself, e.g. a box face that
    fills the detection).
    """
    if border.shape[0] < 3 or points.shape[0] == 0:
        return points, mask, False
    threshold = tolerance * float(np.median(border[:, 2]))
    sample = border[:: max(1, border.shape[0] // _RANSAC_SAMPLE)]
    normal, offset = _ransac_plane(sample, threshold)
    if float(np.mean(np.abs(border @ normal + offset) <= threshold)) < MIN_INLIER_FRACTION:
        return points, mask, False
    if offset < 0.0:  # orient the normal towards the camera: the origin is then on its positive side
        normal, offset = -normal, -offset
    in_front = points @ normal + offset > threshold
    if in_front.sum() < MIN_OBJECT_SHARE * points.shape[0]:
        return points, mask, False
    rows, cols = np.nonzero(mask)
    kept = np.zeros_like(mask)
    kept[rows[in_front], cols[in_front]] = True
    return points[in_front], kept, True


def fit_surface(
    points: np.ndarray,
    target: np.ndarray,
    *,
    radius_m: float = DEFAULT_SURFACE_RADIUS_M,
    min_points: int = DEFAULT_MIN_SURFACE_POINTS,
    tolerance: float = DEFAULT_PLANE_TOLERANCE,
) -> tuple[SurfaceFit | None, str]:
    """(fit, "") or (None, why not): the plane of the surface within ``radius_m`` of ``target``.

    RANSAC over point triples scores candidate planes by their inliers (distance <= ``tolerance`` x the target's
    depth); the best one is refined by least squares (SVD) on its inliers, and the inliers are counted again.
    Refused when fewer than ``min_points`` points are near the target, the plane explains fewer than
    :data:`MIN_INLIER_FRACTION` of them, the patch is too narrow for its noise (:data:`MIN_SPAN_TO_NOISE`) or the
    plane is seen edge-on (:data:`MAX_VIEW_ANGLE_DEG`).
    """
    centre = np.asarray(target, dtype=np.float64).reshape(3)
    patch = points[np.einsum("ij,ij->i", points - centre, points - centre) <= radius_m * radius_m]
    if patch.shape[0] < max(min_points, 3):
        return None, f"only {patch.shape[0]} surface points within {radius_m:g} m of the target (min {min_points})"
    threshold = tolerance * float(centre[2])
    sample = patch[:: max(1, patch.shape[0] // _RANSAC_SAMPLE)]
    normal, offset = _ransac_plane(sample, threshold)
    for _ in range(2):  # refine on the inliers; a second pass settles the inlier set
        inliers = patch[np.abs(patch @ normal + offset) <= threshold]
        if inliers.shape[0] < 3:
            break
        normal, offset = _least_squares_plane(inliers)
    distances = np.abs(patch @ normal + offset)
    on_plane = distances <= threshold
    fraction = float(on_plane.mean())
    if fraction < MIN_INLIER_FRACTION:
        return None, f"no plane fits the surface ({fraction:.0%} of {patch.shape[0]} points on the best one)"
    if float(normal @ centre) > 0.0:  # towards the camera, which sits at the origin
        normal = -normal
    spreads = np.linalg.svd(patch[on_plane] - patch[on_plane].mean(axis=0), compute_uv=False)
    if spreads[1] < MIN_SPAN_TO_NOISE * spreads[2]:
        return None, "the surface around the target is too narrow for its depth noise to give a normal"
    seen_at = math.degrees(math.acos(min(1.0, -float(normal @ centre) / float(np.linalg.norm(centre)))))
    if seen_at > MAX_VIEW_ANGLE_DEG:
        return None, f"the best plane is seen at {seen_at:.0f} deg to the camera ray (a fit along the rays)"
    rms = float(np.sqrt(np.mean(distances[on_plane] ** 2)))
    fit = SurfaceFit((float(normal[0]), float(normal[1]), float(normal[2])), fraction, rms, int(patch.shape[0]))
    return fit, ""


def object_extent(points: np.ndarray, approach_axes: np.ndarray, pixel_m: float = 0.0) -> Extent:
    """The points' robust extent as an oriented box whose x axis is the approach axis.

    The box is the grasp frame (``approach_axes``, 3x3 unit columns) rolled about x by the angle in
    (-45, 45] degrees that gives the smallest cross-section (y x z) of the points: for a box-shaped object
    approached along a face normal, that aligns y and z with its edges, and it stays the upright frame for a
    round one. Each side spans :data:`EXTENT_PERCENTILES` of the points, so flying pixels do not stretch it.
    Points are pixel centres, half a pixel inside the object's silhouette on each side: ``pixel_m`` (one
    pixel's size at the object's depth) is added across the approach axis (y and z).
    """
    sample = points[:: max(1, points.shape[0] // _ROLL_SAMPLE)]
    lateral = sample @ approach_axes[:, 1:]  # (n, 2): y, z of the grasp frame
    best = 0.0
    for step_deg, span_deg in ((5.0, 45.0), (1.0, 5.0)):  # coarse, then fine around the coarse best
        angles = np.deg2rad(best + np.arange(-span_deg + step_deg, span_deg + step_deg / 2, step_deg))
        cos, sin = np.cos(angles), np.sin(angles)
        ys = lateral[:, :1] * cos + lateral[:, 1:] * sin  # (n, angles)
        zs = -lateral[:, :1] * sin + lateral[:, 1:] * cos
        y_low, y_high = np.percentile(ys, EXTENT_PERCENTILES, axis=0)
        z_low, z_high = np.percentile(zs, EXTENT_PERCENTILES, axis=0)
        best = float(np.rad2deg(angles[int(np.argmin((y_high - y_low) * (z_high - z_low)))]))
    best = (best + 45.0) % 90.0 - 45.0  # the same box with y and z swapped is the same object
    angle = math.radians(best)
    x, y, z = approach_axes[:, 0], approach_axes[:, 1], approach_axes[:, 2]
    axes = np.column_stack([x, y * math.cos(angle) + z * math.sin(angle), -y * math.sin(angle) + z * math.cos(angle)])
    coordinates = points[:: max(1, points.shape[0] // _EXTENT_SAMPLE)] @ axes  # each point in the box axes
    low, high = np.percentile(coordinates, EXTENT_PERCENTILES, axis=0)
    centre = axes @ ((low + high) / 2.0)
    size = high - low + np.array([0.0, pixel_m, pixel_m])
    return Extent(
        (float(centre[0]), float(centre[1]), float(centre[2])),
        (float(size[0]), float(size[1]), float(size[2])),
        quaternion_from_matrix(axes),
    )


def voxel_downsample(points: np.ndarray, voxel_m: float, max_points: int) -> np.ndarray:
    """(M, 3) float32: one point (the centroid) per ``voxel_m`` cube, then at most ``max_points``.

    When the voxels still hold more than ``max_points``, the voxel grows (x1.5 per step) until they fit, so the
    cloud thins out evenly instead of losing a region. Deterministic.
    """
    if voxel_m <= 0.0 or not math.isfinite(voxel_m):
        raise ValueError(f"voxel_m must be a positive number of metres, got {voxel_m}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if points.shape[0] == 0:
        return np.zeros((0, 3), np.float32)
    size = voxel_m
    while True:
        keys = np.floor(points / size).astype(np.int64)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        if counts.size <= max_points:
            break
        size *= 1.5
    inverse = inverse.reshape(-1)
    sums = np.zeros((counts.size, 3))
    np.add.at(sums, inverse, points)
    centroids: np.ndarray = (sums / counts[:, None]).astype(np.float32)
    return centroids


def _ransac_plane(points: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """(unit normal, offset) of the plane ``normal . p + offset = 0`` with the most inliers among random triples."""
    rng = np.random.default_rng(_SEED)
    count = points.shape[0]
    triples = rng.integers(0, count, size=(_RANSAC_ITERATIONS, 3))
    a, b, c = points[triples[:, 0]], points[triples[:, 1]], points[triples[:, 2]]
    normals = np.cross(b - a, c - a)
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 1e-12  # collinear or repeated samples define no plane
    if not usable.any():
        return _least_squares_plane(points)
    normals = normals[usable] / lengths[usable, None]
    offsets = -np.einsum("ij,ij->i", normals, a[usable])
    scores = (np.abs(points @ normals.T + offsets) <= threshold).sum(axis=0)
    best = int(np.argmax(scores))  # ties: the first sample, deterministically
    return normals[best], float(offsets[best])


def _least_squares_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Total least squares plane: through the centroid, normal = the direction of least variance."""
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, float(-normal @ centroid)
