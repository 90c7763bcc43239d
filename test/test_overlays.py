"""Overlays viewers draw (chatrex_ros/core/overlays.py): box outlines, colours per phrase, readable labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from chatrex_ros.core.overlays import (
    PALETTE,
    REGION_COLOUR,
    Region,
    draw_answer,
    line_width,
    outline_segments,
    phrase_colours,
    place_labels,
)
from chatrex_ros.core.types import Detection


def test_outline_segments_are_each_boxs_four_edges_with_its_exact_corners() -> None:
    boxes = np.array([[10.5, 20.25, 50.0, 60.75], [0.0, 0.0, 640.0, 480.0]])
    points = outline_segments(boxes)
    assert points.shape == (16, 2)
    for box, segments in zip(boxes, points.reshape(2, 4, 2, 2), strict=True):
        x1, y1, x2, y2 = box
        assert [tuple(map(tuple, s)) for s in segments] == [
            ((x1, y1), (x2, y1)),  # top
            ((x2, y1), (x2, y2)),  # right
            ((x2, y2), (x1, y2)),  # bottom
            ((x1, y2), (x1, y1)),  # left
        ]
    assert outline_segments(np.zeros((0, 4))).shape == (0, 2)


def test_one_colour_per_phrase_in_order_of_first_appearance() -> None:
    assert phrase_colours(["cup", "bowl", "cup"]) == [PALETTE[0], PALETTE[1], PALETTE[0]]
    assert phrase_colours([str(i) for i in range(9)])[8] == PALETTE[0], "the palette repeats after eight"


@pytest.mark.parametrize(("size", "width"), [((640, 480), 1), ((1280, 720), 2), ((3840, 2160), 6)])
def test_lines_scale_with_the_image(size, width) -> None:
    assert line_width(*size) == width


def _inside(rectangle: tuple[int, int, int, int], width: int, height: int) -> bool:
    x, y, w, h = rectangle
    return x >= 0 and y >= 0 and x + w <= width and y + h <= height


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_labels_stay_inside_the_frame_and_clear_of_each_other() -> None:
    width, height = 320, 240
    anchors = [
        (0.0, 0.0, 40.0, 30.0),  # top-left corner: no room above
        (300.0, 200.0, 320.0, 240.0),  # bottom-right corner: the label would run off both edges
        *[(100.0, 100.0, 160.0, 150.0)] * 5,  # five boxes on the same spot
        (-20.0, 230.0, 10.0, 260.0),  # partly outside the frame
    ]
    sizes = [(80, 16)] * len(anchors)
    corners = place_labels(anchors, sizes, (width, height))
    rectangles = [(x, y, w, h) for (x, y), (w, h) in zip(corners, sizes, strict=True)]
    assert all(_inside(r, width, height) for r in rectangles)
    assert not any(_overlap(a, b) for a, b in itertools.combinations(rectangles, 2))
    assert corners[2] == (100, 84), "the first label of a box sits just above it"


def test_an_annotated_frame_draws_boxes_and_regions_with_readable_labels() -> None:
    width, height = 320, 240
    frame = np.full((height, width, 3), 60, np.uint8)
    detections = [
        Detection(proposal_index=2, label="red mug", box=(0.0, 0.0, 120.0, 90.0), score=0.9),
        Detection(proposal_index=5, label="red mug", box=(5.0, 5.0, 125.0, 95.0), score=0.8),
        Detection(proposal_index=7, label="a very long phrase for a bowl", box=(250.0, 180.0, 320.0, 240.0), score=0.5),
    ]
    regions = [Region(index=9, box=(150.0, 60.0, 220.0, 140.0))]
    drawn, labels = draw_answer(frame, detections, regions)
    assert drawn.shape == frame.shape and np.array_equal(frame, np.full_like(frame, 60)), "the input is untouched"
    assert len(labels) == 4
    assert all(_inside(r, width, height) for r in labels), labels
    assert not any(_overlap(a, b) for a, b in itertools.combinations(labels, 2)), labels
    for x, y, w, h in labels:  # text was written on each label's dark backing
        patch = drawn[y : y + h, x : x + w]
        assert (patch == 0).all(axis=2).any() and (patch > 100).any(axis=2).any()
    assert tuple(drawn[60, 150]) == REGION_COLOUR, "the queried region's outline, in white"
    assert tuple(drawn[140, 200]) == REGION_COLOUR
    assert tuple(drawn[100, 270]) == (60, 60, 60), "nothing drawn away from the boxes and labels"
    assert tuple(drawn[50, 120]) == tuple(drawn[50, 125]) == PALETTE[0], "both mugs' right edges, in one colour"


def test_the_foxglove_layout_shows_the_camera_with_both_overlays_and_the_grasp_markers() -> None:
    import json
    from pathlib import Path

    from chatrex_ros.names import GRAPH_NAMESPACE as NAMESPACE

    root = Path(__file__).resolve().parents[1]
    layout = json.loads((root / "config" / "foxglove_layout.json").read_text())
    panels = layout["configById"]

    def referenced(node) -> list[str]:
        return [node] if isinstance(node, str) else referenced(node["first"]) + referenced(node["second"])

    assert sorted(referenced(layout["layout"])) == sorted(panels), "every panel placed, no panel missing"
    camera = panels["Image!chatrex_camera"]["imageMode"]
    assert set(camera["annotations"]) == {f"{NAMESPACE}/proposals/markers", f"{NAMESPACE}/answer/markers"}
    topics = [*camera["annotations"], panels["Image!chatrex_answer"]["imageMode"]["imageTopic"]]
    topics += list(panels["3D!chatrex_grasp"]["topics"])
    sources = "".join(p.read_text() for p in (root / "chatrex_ros" / "ros").glob("*_node.py"))
    for topic in topics:  # each is a topic a node of this package publishes, in the launcher's namespace
        assert topic.startswith(f"{NAMESPACE}/") and f'"{topic.removeprefix(NAMESPACE + "/")}"' in sources, topic
