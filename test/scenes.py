"""Ray-cast synthetic depth scenes with known geometry, for the grasp surface tests and benchmark.

Every pixel's ray (through the pixel centre, OpenCV convention) is intersected with planes, oriented boxes and
cylinders given in the camera's optical frame; the depth is the nearest hit's z. The truth (normals, sizes)
is exact, so a test can state its tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

K_VGA = np.array([[525.0, 0.0, 319.5], [0.0, 525.0, 239.5], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 640, 480


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    angle = math.radians(degrees)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


@dataclass(frozen=True)
class Plane:
    point: tuple[float, float, float]
    normal: tuple[float, float, float]

    def hit(self, rays: np.ndarray) -> np.ndarray:
        n = np.asarray(self.normal, dtype=np.float64)
        denominator = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.asarray(self.point) @ n / denominator
        return np.where(t > 0, t, np.inf)


@dataclass(frozen=True)
class OrientedBox:
    centre: tuple[float, float, float]
    size: tuple[float, float, float]  # along the columns of axes
    axes: np.ndarray  # 3x3, columns: the box's axes in the optical frame

    def hit(self, rays: np.ndarray) -> np.ndarray:
        local = rays @ self.axes  # ray directions in box coordinates
        origin = -np.asarray(self.centre) @ self.axes  # camera origin in box coordinates
        half = np.asarray(self.size) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - origin) / local
            t2 = (half - origin) / local
        near = np.nanmax(np.minimum(t1, t2), axis=1)
        far = np.nanmin(np.maximum(t1, t2), axis=1)
        return np.where((far >= near) & (near > 0), near, np.inf)


@dataclass(frozen=True)
class Cylinder:
    centre: tuple[float, float, float]
    axis: tuple[float, float, float]
    radius: float
    length: float

    def hit(self, rays: np.ndarray) -> np.ndarray:
        a = np.asarray(self.axis, dtype=np.float64)
        a = a / np.linalg.norm(a)
        c = np.asarray(self.centre, dtype=np.float64)
        d_perp = rays - np.outer(rays @ a, a)
        o_perp = -c - (-c @ a) * a
        qa = np.einsum("ij,ij->i", d_perp, d_perp)
        qb = 2 * d_perp @ o_perp
        qc = o_perp @ o_perp - self.radius**2
        disc = qb * qb - 4 * qa * qc
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (-qb - np.sqrt(disc)) / (2 * qa)
        along = (t[:, None] * rays - c) @ a
        side = np.where((disc >= 0) & (t > 0) & (np.abs(along) <= self.length / 2), t, np.inf)
        caps = []
        for sign in (-1.0, 1.0):
            cap_centre = c + sign * a * self.length / 2
            tc = Plane(tuple(cap_centre), tuple(a)).hit(rays)
            points = tc[:, None] * rays - cap_centre
            inside = np.einsum("ij,ij->i", points, points) <= self.radius**2
            caps.append(np.where(inside, tc, np.inf))
        return np.minimum(side, np.minimum(*caps))


def render(shapes: list, K: np.ndarray = K_VGA, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W) float64 depth (optical z, metres) of the nearest shape per pixel; 0 where nothing is hit."""
    rows, cols = np.mgrid[0:height, 0:width]
    rays = np.stack(
        [(cols.ravel() - K[0, 2]) / K[0, 0], (rows.ravel() - K[1, 2]) / K[1, 1], np.ones(rows.size)], axis=1
    )
    t = np.full(rows.size, np.inf)
    for shape in shapes:
        t = np.minimum(t, shape.hit(rays))
    depth = np.where(np.isfinite(t), t, 0.0)  # rays have z = 1, so t is the depth
    return depth.reshape(height, width)


def box_around(depth: np.ndarray, near: float, far: float) -> tuple[float, float, float, float]:
    """The tight pixel box (x1, y1, x2, y2, box convention) of the pixels with depth in [near, far]."""
    rows, cols = np.nonzero((depth >= near) & (depth <= far))
    return (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))


def degrade(depth: np.ndarray, noise: float = 0.0, invalid: float = 0.0, seed: int = 0) -> np.ndarray:
    """float32 depth with Gaussian noise of ``noise`` x depth and a share ``invalid`` of pixels set to 0."""
    rng = np.random.default_rng(seed)
    out = depth * (1.0 + noise * rng.standard_normal(depth.shape))
    out[rng.random(depth.shape) < invalid] = 0.0
    out[depth == 0.0] = 0.0
    return out.astype(np.float32)


def angle_deg(a: np.ndarray | tuple, b: np.ndarray | tuple) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(max(-1.0, min(1.0, float(cosine)))))


def tabletop(pitch_deg: float, distance_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(up, right, ahead): unit vectors of a table's frame seen by a camera pitched down by ``pitch_deg``.

    The table is horizontal and the camera has no roll, so optical +x is horizontal (right); ``ahead`` is
    horizontal and away from the camera. The table passes through the optical axis at ``distance_m``.
    """
    phi = math.radians(pitch_deg)
    up = np.array([0.0, -math.cos(phi), -math.sin(phi)])
    ahead = np.array([0.0, -math.sin(phi), math.cos(phi)])
    return up, np.array([1.0, 0.0, 0.0]), ahead


def box_on_table(
    size: tuple[float, float, float], pitch_deg: float = 40.0, yaw_deg: float = 25.0, distance_m: float = 1.0
) -> tuple[OrientedBox, Plane]:
    """A box (width, depth, height) standing on a table at ``distance_m`` along the optical axis, turned by yaw."""
    up, right, ahead = tabletop(pitch_deg, distance_m)
    yaw = math.radians(yaw_deg)
    width_axis = math.cos(yaw) * right + math.sin(yaw) * ahead
    depth_axis = -math.sin(yaw) * right + math.cos(yaw) * ahead
    base = np.array([0.0, 0.0, distance_m])
    box = OrientedBox(tuple(base + up * size[2] / 2), size, np.column_stack([width_axis, depth_axis, up]))
    return box, Plane(tuple(base), tuple(up))


def cylinder_on_table(
    radius: float, height: float, pitch_deg: float = 20.0, distance_m: float = 0.8
) -> tuple[Cylinder, Plane]:
    """An upright cylinder (a can, a bottle) standing on a table at ``distance_m`` along the optical axis."""
    up, _, _ = tabletop(pitch_deg, distance_m)
    base = np.array([0.0, 0.0, distance_m])
    return Cylinder(tuple(base + up * height / 2), tuple(up), radius, height), Plane(tuple(base), tuple(up))


def silhouette_box(shape) -> tuple[float, float, float, float]:
    """The tight detection box of one shape alone: what a good detector draws around it."""
    return box_around(render([shape]), 1e-6, 1e6)
