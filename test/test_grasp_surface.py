"""Surface normal, extent and points of a grasp target, on ray-cast scenes with known geometry (test/scenes.py).

Tolerances reached (asserted below): normals within 3 deg on a tilted plane, also with 1 % depth noise and
30 % invalid pixels; a box on a table seen at 40 deg: extent within 1 cm at 1 m noise-free (the lower 1 % of
depth above the table is removed with it), within 2.5 cm across and 6 cm along the approach with 1 % noise
(noise along the rays stretches the percentiles); an upright cylinder: radial normal within 6 deg, diameter and
height within 1 cm; a 1.5 cm rod 40 cm in front of a wall: the rod, not the wall, within 1 cm; with 1 % noise
(6 mm, more than a third of its width) its face gives no trustworthy normal and `surface_normal` falls back to
the camera ray, saying why; with 0.3 % noise its normal is within 3 deg.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scenes import (
    K_VGA,
    OrientedBox,
    Plane,
    angle_deg,
    box_on_table,
    cylinder_on_table,
    degrade,
    render,
    rotation,
    silhouette_box,
)

from chatrex_ros.core.grasp import approach_axes, target_from_box
from chatrex_ros.core.grasp_surface import fit_surface, object_extent, voxel_downsample, without_support

CENTRE_BOX = (220.0, 140.0, 420.0, 340.0)  # 200 x 200 px
CONDITIONS = [(0.0, 0.0), (0.01, 0.0), (0.0, 0.3), (0.01, 0.3)]  # (noise as a share of depth, invalid share)
IDS = ["clean", "noise1%", "invalid30%", "noise1%+invalid30%"]


def tilted_plane_normal(about_y: float = 35.0, about_x: float = 20.0) -> np.ndarray:
    return rotation((0, 1, 0), about_y) @ rotation((1, 0, 0), about_x) @ np.array([0.0, 0.0, -1.0])


@pytest.mark.parametrize(("noise", "invalid"), CONDITIONS, ids=IDS)
def test_the_normal_of_a_tilted_plane_is_found_within_3_degrees(noise, invalid) -> None:
    normal = tilted_plane_normal()
    depth = degrade(render([Plane((0.0, 0.0, 1.0), tuple(normal))]), noise, invalid)
    target = target_from_box(depth, K_VGA, CENTRE_BOX, approach="surface_normal")
    assert target.valid and target.approach_source == "surface_normal" and target.note == ""
    assert angle_deg(target.normal, normal) < 3.0
    assert np.dot(target.normal, target.point) < 0, "the normal points towards the camera"
    assert angle_deg(target.approach, -normal) < 3.0
    assert 0.5 <= target.fit_inlier_fraction <= 1.0 and target.fit_points >= 30
    assert target.fit_rms_m < 0.002 + 0.5 * noise  # the plane explains the points up to their noise


def test_the_camera_ray_stays_the_approach_unless_asked_and_the_normal_is_still_reported() -> None:
    normal = tilted_plane_normal()
    depth = render([Plane((0.0, 0.0, 1.0), tuple(normal))]).astype(np.float32)
    target = target_from_box(depth, K_VGA, CENTRE_BOX)
    ray = np.array(target.point) / np.linalg.norm(target.point)
    assert target.approach_source == "camera_ray" and angle_deg(target.approach, ray) < 1e-6
    assert angle_deg(target.normal, normal) < 1.0


def test_too_few_surface_points_fall_back_to_the_camera_ray_and_say_why() -> None:
    depth = np.zeros((480, 640), np.float32)
    depth[300:303, 300:303] = 1.0  # nine pixels with depth
    target = target_from_box(depth, K_VGA, (290.0, 290.0, 313.0, 313.0), approach="surface_normal", margin=0.0)
    assert target.valid and target.approach_source == "camera_ray"
    assert "fell back to camera_ray" in target.note and "surface points" in target.note
    assert all(math.isnan(v) for v in target.normal)


@pytest.mark.parametrize(("noise", "invalid"), CONDITIONS, ids=IDS)
def test_a_box_on_a_table_seen_at_an_angle_has_its_extent(noise, invalid) -> None:
    size = (0.20, 0.12, 0.10)
    box, table = box_on_table(size, pitch_deg=40.0, yaw_deg=25.0, distance_m=1.0)
    depth = degrade(render([box, table]), noise, invalid)
    target = target_from_box(depth, K_VGA, silhouette_box(box), approach="surface_normal")
    assert target.valid and target.extent is not None
    face_normals = [-box.axes[:, i] * np.sign(box.axes[:, i] @ np.array(target.point)) for i in range(3)]
    assert min(angle_deg(target.normal, n) for n in face_normals) < 3.0 + 300 * noise, "one of the box's faces"
    found = np.array(target.extent.size)
    # The extent box's x is the approach (into the face), y and z lie in the face: compare with that face's sizes.
    face = int(np.argmin([angle_deg(target.normal, n) for n in face_normals]))
    across = sorted(size[i] for i in range(3) if i != face)
    if noise == 0.0:
        assert abs(found[0] - size[face]) < 0.01
        assert np.allclose(sorted(found[1:]), across, atol=0.01)
    else:
        assert abs(found[0] - size[face]) < 0.06
        assert np.allclose(sorted(found[1:]), across, atol=0.025)
    assert (target.width_m, target.height_m) == (found[1], found[2])
    centre_truth = np.array(box.centre)
    assert np.linalg.norm(np.array(target.extent.centre) - centre_truth) < 0.02 + 2 * noise


def test_an_upright_cylinder_has_a_radial_normal_and_its_diameter_and_height() -> None:
    can, table = cylinder_on_table(radius=0.04, height=0.15, pitch_deg=20.0, distance_m=0.8)
    depth = render([can, table]).astype(np.float32)
    target = target_from_box(depth, K_VGA, silhouette_box(can), approach="surface_normal")
    assert target.valid and target.approach_source == "surface_normal"
    axis, centre = np.array(can.axis), np.array(can.centre)
    offset = np.array(target.point) - centre
    radial = offset - (offset @ axis) * axis
    assert angle_deg(target.normal, radial) < 6.0
    sizes = sorted(target.extent.size[1:])
    assert abs(sizes[0] - 0.08) < 0.01 and abs(sizes[1] - 0.15) < 0.01


def test_a_thin_object_in_front_of_a_wall_is_the_target_not_the_wall() -> None:
    rod = OrientedBox((0.02, 0.0, 0.6), (0.015, 0.20, 0.015), np.eye(3))
    depth = render([rod, Plane((0.0, 0.0, 1.0), (0.0, 0.0, -1.0))]).astype(np.float32)
    x1, y1, x2, y2 = silhouette_box(rod)
    target = target_from_box(depth, K_VGA, (x1 - 20, y1 - 10, x2 + 20, y2 + 10))  # a loose detection box
    assert target.valid and abs(target.point[2] - 0.5925) < 0.005
    assert abs(target.width_m - 0.015) < 0.01 and abs(target.height_m - 0.20) < 0.01


@pytest.mark.parametrize("invalid", [0.0, 0.3], ids=["all-valid", "invalid30%"])
def test_a_thin_object_whose_face_is_narrower_than_the_noise_falls_back_to_the_camera_ray(invalid) -> None:
    # 1 % noise (6 mm at 0.6 m) on a 1.5 cm face: a plane along the rays fits the points as well as the face.
    rod = OrientedBox((0.02, 0.0, 0.6), (0.015, 0.20, 0.015), np.eye(3))
    depth = degrade(render([rod, Plane((0.0, 0.0, 1.0), (0.0, 0.0, -1.0))]), 0.01, invalid)
    x1, y1, x2, y2 = silhouette_box(rod)
    target = target_from_box(depth, K_VGA, (x1 - 20, y1 - 10, x2 + 20, y2 + 10), approach="surface_normal")
    assert target.valid and target.approach_source == "camera_ray"
    assert "fell back to camera_ray" in target.note and "too narrow for its depth noise" in target.note
    ray = np.array(target.point) / np.linalg.norm(target.point)
    assert angle_deg(target.approach, ray) < 1e-6, "never a sideways approach"
    assert abs(target.width_m - 0.015) < 0.01 and abs(target.height_m - 0.20) < 0.01


def test_with_less_noise_the_thin_objects_face_gives_the_normal() -> None:
    rod = OrientedBox((0.02, 0.0, 0.6), (0.015, 0.20, 0.015), np.eye(3))
    depth = degrade(render([rod, Plane((0.0, 0.0, 1.0), (0.0, 0.0, -1.0))]), 0.003)
    x1, y1, x2, y2 = silhouette_box(rod)
    target = target_from_box(depth, K_VGA, (x1 - 20, y1 - 10, x2 + 20, y2 + 10), approach="surface_normal")
    assert target.approach_source == "surface_normal" and angle_deg(target.normal, (0.0, 0.0, -1.0)) < 3.0


def test_a_plane_seen_edge_on_gives_no_normal() -> None:
    ys, zs = np.meshgrid(np.linspace(-0.03, 0.03, 30), np.linspace(0.97, 1.03, 30))
    along_the_ray = np.column_stack([np.full(ys.size, 0.001), ys.ravel(), zs.ravel()])  # the plane x = 1 mm
    fit, why = fit_surface(along_the_ray, np.array([0.001, 0.0, 1.0]))
    assert fit is None and "seen at 90 deg" in why


def test_the_table_in_the_box_corners_is_removed_but_an_object_filling_its_box_is_kept() -> None:
    box, table = box_on_table((0.20, 0.12, 0.10))
    depth = render([box, table]).astype(np.float32)
    with_table = target_from_box(depth, K_VGA, silhouette_box(box), keep_points=True)
    assert with_table.points is not None and with_table.mask is not None
    assert with_table.points.shape[0] == int(with_table.mask.sum())
    table_normal = np.array(table.normal)
    heights = with_table.points @ table_normal - np.array(table.point) @ table_normal
    assert heights.min() > 0.005, "no point of the table is left"
    wall = render([Plane((0.0, 0.0, 0.9), (0.0, 0.0, -1.0))]).astype(np.float32)
    filling = target_from_box(wall, K_VGA, CENTRE_BOX, keep_points=True)
    assert filling.points is not None and filling.points.shape[0] > 0.9 * filling.mask.size


def test_the_surface_fit_refuses_what_is_no_plane() -> None:
    rng = np.random.default_rng(1)
    blob = rng.normal(0.0, 0.05, (500, 3)) + [0.0, 0.0, 1.0]
    fit, why = fit_surface(blob, np.array([0.0, 0.0, 1.0]), radius_m=0.1)
    assert fit is None and "no plane fits" in why


def test_without_support_needs_a_plane_on_the_border() -> None:
    rng = np.random.default_rng(2)
    points = rng.uniform(-0.1, 0.1, (400, 3)) + [0.0, 0.0, 1.0]
    mask = np.ones((20, 20), bool)
    scattered = rng.uniform(-0.3, 0.3, (200, 3)) + [0.0, 0.0, 1.2]
    kept, kept_mask, removed = without_support(points, mask, scattered)
    assert not removed and kept is points and kept_mask is mask


def test_object_extent_rolls_the_box_to_the_objects_edges() -> None:
    rng = np.random.default_rng(3)
    face = np.column_stack([np.zeros(4000), rng.uniform(-0.1, 0.1, 4000), rng.uniform(-0.03, 0.03, 4000)])
    turned = face @ rotation((1, 0, 0), 30.0).T + [1.0, 0.0, 0.0]  # a 20 x 6 cm face, rolled by 30 deg
    extent = object_extent(turned, approach_axes((1.0, 0.0, 0.0)))  # approached along the face's normal
    assert sorted(extent.size[1:]) == pytest.approx([0.06, 0.20], abs=0.004)
    assert extent.size[0] == pytest.approx(0.0, abs=1e-9)
    assert extent.centre == pytest.approx((1.0, 0.0, 0.0), abs=0.005)


def test_voxel_downsampling_caps_the_points_evenly_and_deterministically() -> None:
    rng = np.random.default_rng(4)
    points = rng.uniform(0.0, 0.2, (20_000, 3))
    thinned = voxel_downsample(points, 0.005, 1000)
    assert thinned.dtype == np.float32 and 0 < thinned.shape[0] <= 1000
    assert np.array_equal(thinned, voxel_downsample(points, 0.005, 1000))
    assert thinned.min(axis=0) == pytest.approx([0, 0, 0], abs=0.03)  # every region is still covered
    assert thinned.max(axis=0) == pytest.approx([0.2, 0.2, 0.2], abs=0.03)
    with pytest.raises(ValueError, match="voxel_m"):
        voxel_downsample(points, 0.0, 10)
