"""Boxes as ``visualization_msgs/ImageMarker``: the overlay Foxglove, Lichtblick and RViz draw on an image panel.

One LINE_LIST marker per frame and topic (each box's four edges, a colour per point), stamped with the image's
header, so a viewer aligns it with the frame it belongs to and a new frame's marker replaces the last one (same
``ns`` and ``id``; an empty marker clears it). The geometry is :mod:`chatrex_ros.core.overlays`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import ImageMarker

from chatrex_ros.core.overlays import outline_segments


def box_marker(
    header: Header, boxes: np.ndarray, colours: Sequence[tuple[int, int, int]], *, ns: str, width_px: float
) -> ImageMarker:
    """The boxes (N x 4 xyxy, original pixels) as one LINE_LIST, box i drawn in ``colours[i]`` (RGB 0..255)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(colours) != boxes.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {len(colours)} colours")
    marker = ImageMarker(header=header, ns=ns, id=0, type=ImageMarker.LINE_LIST, action=ImageMarker.ADD)
    marker.scale = float(width_px)
    marker.points = [Point(x=float(x), y=float(y)) for x, y in outline_segments(boxes)]
    marker.outline_colors = [_rgba(colour) for colour in colours for _ in range(8)]
    marker.outline_color = _rgba(colours[0]) if colours else _rgba((255, 255, 255))
    return marker


def _rgba(colour: tuple[int, int, int]) -> ColorRGBA:
    red, green, blue = colour
    return ColorRGBA(r=red / 255.0, g=green / 255.0, b=blue / 255.0, a=1.0)
