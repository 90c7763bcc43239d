"""The three nodes' parameters: one table each, and the frozen dataclass a node reads them through.

The tables (:class:`~chatrex_ros.parameters.ParamSpec` rows) drive declaration, validation at start and at
runtime, the parameter tables in docs/nodes.md, `chatrex-ros up` and the offline tools' config reading. A node
resolves them once into its dataclass, so parameters are read as typed attributes (``params.min_score``), not by
string key; nested ROS names (``image_qos.depth``) are nested dataclasses (``params.image_qos.depth``). A test
keeps each dataclass and its table field for field in sync. ROS-free on purpose: the offline tools read the same
rows.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from chatrex_ros.core.grasp_pairing import SELECTIONS
from chatrex_ros.core.grasp_surface import (
    APPROACHES,
    DEFAULT_MIN_SURFACE_POINTS,
    DEFAULT_PLANE_TOLERANCE,
    DEFAULT_SURFACE_RADIUS_M,
)
from chatrex_ros.core.images import MAX_IMAGE_PIXELS
from chatrex_ros.core.proposals import (
    DEFAULT_MIN_SCORE,
    DEFAULT_NMS_IOU,
    MAX_COUNT_RANGE,
    MIN_SCORE_RANGE,
    NMS_IOU_RANGE,
)
from chatrex_ros.core.types import MAX_PROPOSALS
from chatrex_ros.core.vlm_protocol import BOX_FORMATS, DEFAULT_MATCH_IOU
from chatrex_ros.models.registry import LANGUAGE_BACKENDS, NO_LANGUAGE_BACKEND, PROPOSAL_BACKENDS
from chatrex_ros.models.selective_search import MODES as SELECTIVE_SEARCH_MODES
from chatrex_ros.models.upn.engine_cache import DEFAULT_PRECISION
from chatrex_ros.parameters import ParamSpec, resolve, sensor_qos_specs

P = TypeVar("P")


@dataclasses.dataclass(frozen=True)
class SensorQos:
    """A sensor subscription's QoS (``image_qos.*``, ``depth_qos.*``)."""

    reliability: str
    depth: int


@dataclasses.dataclass(frozen=True)
class ProposalNodeParams:
    """proposal_node's parameters (:data:`PROPOSAL_NODE`)."""

    backend: str
    backend_options: str
    granularity: str
    checkpoint: str
    model_variant: str
    onnx: str
    engine_cache_dir: str
    device: str
    gpu_index: int
    precision: str
    selective_search_long_side: int
    selective_search_mode: str
    selective_search_workers: int
    min_score: float
    nms_iou: float
    max_proposals: int
    enabled: bool
    max_rate_hz: float
    mode: str
    on_demand_frames: int
    image_transport: str
    max_image_pixels: int
    warmup: bool
    autostart: bool
    publish_markers: bool
    input_silence_s: float
    image_qos: SensorQos


@dataclasses.dataclass(frozen=True)
class VlmParams:
    """The OpenAI-compatible VLM server of ``language_backend:=openai`` (``vlm.*``)."""

    base_url: str
    model: str
    api_key_env: str
    box_format: str
    timeout_s: float
    retries: int
    match_iou: float


@dataclasses.dataclass(frozen=True)
class LanguageNodeParams:
    """language_node's parameters (:data:`LANGUAGE_NODE`)."""

    language_backend: str
    model_path: str
    trust_remote_code: bool
    allow_hub_download: bool
    device: str
    dtype: str
    backend_options: str
    max_new_tokens: int
    query_timeout_s: float
    queue_size: int
    frame_cache_size: int
    recent_images: int
    frame_cache_mb: int
    pairing_wait_s: float
    proposals_on_demand: bool
    input_silence_s: float
    publish_annotated: bool
    autostart: bool
    publish_markers: bool
    image_transport: str
    max_image_pixels: int
    image_qos: SensorQos
    vlm: VlmParams


@dataclasses.dataclass(frozen=True)
class GraspNodeParams:
    """grasp_target_node's parameters (:data:`GRASP_NODE`)."""

    selection: str
    phrase: str
    proposal_index: int
    stamp_tolerance_s: float
    pairing_timeout_s: float
    margin: float
    percentile: float
    foreground: bool
    approach: str
    surface_radius_m: float
    min_surface_points: int
    plane_tolerance: float
    publish_points: bool
    publish_mask: bool
    points_voxel_m: float
    max_points: int
    depth_scale: float
    min_depth_m: float
    max_depth_m: float
    min_focal_px: float
    max_focal_px: float
    color_width: int
    color_height: int
    depth_buffer_size: int
    pinned_frames: int
    depth_buffer_mb: int
    input_silence_s: float
    depth_qos: SensorQos

    @property
    def stamp_tolerance_ns(self) -> int:
        """``stamp_tolerance_s`` as the integer nanoseconds stamps are compared in."""
        return round(self.stamp_tolerance_s * 1e9)

    def problem(self) -> str | None:
        """Rules that span parameters; None when consistent, else the reason."""
        if self.selection == "phrase" and not self.phrase.strip():
            return "selection 'phrase' needs a non-empty `phrase` parameter"
        if self.selection == "index" and self.proposal_index < 0:
            return "selection 'index' needs `proposal_index` >= 0"
        if (self.color_width == 0) != (self.color_height == 0):
            return "color_width and color_height must both be 0 (boxes in depth pixels) or both set"
        if not self.min_depth_m < self.max_depth_m:
            return f"min_depth_m ({self.min_depth_m}) must be below max_depth_m ({self.max_depth_m})"
        if not self.min_focal_px < self.max_focal_px:
            return f"min_focal_px ({self.min_focal_px}) must be below max_focal_px ({self.max_focal_px})"
        return None

    @property
    def depth_range(self) -> tuple[float, float]:
        """(min_depth_m, max_depth_m): the depths a target may have."""
        return (self.min_depth_m, self.max_depth_m)

    @property
    def focal_range(self) -> tuple[float, float]:
        """(min_focal_px, max_focal_px): the focal lengths a camera_info may have."""
        return (self.min_focal_px, self.max_focal_px)


IMAGE_TRANSPORT = ParamSpec(
    "image_transport",
    "raw",
    "raw: subscribe `image`; compressed: `image/compressed`.",
    ("raw", "compressed"),
    read_only=True,
)
"""The camera subscription both image-reading nodes share."""

MAX_IMAGE_PIXELS_SPEC = ParamSpec(
    "max_image_pixels",
    MAX_IMAGE_PIXELS,
    "Images declaring more pixels are dropped with a reason, before any decoding (decompression bombs).",
    minimum=1,
    maximum=2**30,
)
"""Both image-reading nodes' limit on one image's size."""

AUTOSTART = ParamSpec(
    "autostart",
    True,
    "Configure (load the model) and activate at start-up; false: unconfigured until a lifecycle manager calls "
    "change_state.",
    read_only=True,
)


PROPOSAL_NODE: list[ParamSpec] = [
    ParamSpec(
        "backend", "selective_search", "Proposal backend.", tuple(PROPOSAL_BACKENDS), read_only=True, allow_plugin=True
    ),
    ParamSpec(
        "backend_options", "", "JSON object of keyword arguments for a `python:module:Class` backend.", read_only=True
    ),
    ParamSpec(
        "granularity",
        "fine",
        "UPN prompt: fine (parts, anything) or coarse (instances).",
        ("fine", "coarse"),
        read_only=True,
    ),
    ParamSpec("checkpoint", "", "UPN checkpoint (.pth or .safetensors) for the torch backend.", read_only=True),
    ParamSpec(
        "model_variant",
        "large",
        "UPN architecture for the torch backend (large or tiny).",
        ("large", "tiny"),
        read_only=True,
    ),
    ParamSpec(
        "onnx", "", "UPN ONNX file (chatrex-ros export-upn) for the onnxruntime and tensorrt backends.", read_only=True
    ),
    ParamSpec("engine_cache_dir", "~/.cache/chatrex_ros/engines", "TensorRT engine cache directory.", read_only=True),
    ParamSpec("device", "cpu", "Device for torch / onnxruntime backends.", ("cpu", "cuda"), read_only=True),
    ParamSpec(
        "gpu_index",
        0,
        "CUDA device number for the tensorrt backend and for torch / onnxruntime with device cuda.",
        minimum=0,
        read_only=True,
    ),
    ParamSpec(
        "precision",
        "auto",
        f"Inference precision (torch: fp32/fp16/bf16, tensorrt: fp32/fp16); auto: {DEFAULT_PRECISION} for tensorrt "
        "(the build-engine default, so the node loads the engine it built), fp32 for torch.",
        ("auto", "fp32", "fp16", "bf16"),
        read_only=True,
    ),
    ParamSpec(
        "selective_search_long_side",
        320,
        "Selective search works on a copy this long (px).",
        minimum=64,
        maximum=4096,
        read_only=True,
    ),
    ParamSpec(
        "selective_search_mode",
        "balanced",
        "balanced: HSV and Lab searched apart and interleaved (parallel); fast / quality / single: OpenCV's modes.",
        SELECTIVE_SEARCH_MODES,
        read_only=True,
    ),
    ParamSpec(
        "selective_search_workers",
        2,
        "Processes for the balanced mode (one per colour space; same output with 1).",
        minimum=1,
        maximum=2,
        read_only=True,
    ),
    ParamSpec(
        "min_score",
        DEFAULT_MIN_SCORE,
        "Drop proposals scoring below this.",
        minimum=MIN_SCORE_RANGE[0],
        maximum=MIN_SCORE_RANGE[1],
    ),
    ParamSpec(
        "nms_iou",
        DEFAULT_NMS_IOU,
        "Greedy NMS IoU threshold (<= 0 disables NMS).",
        minimum=NMS_IOU_RANGE[0],
        maximum=NMS_IOU_RANGE[1],
    ),
    # The core selects zero boxes if asked; a proposal node that keeps none answers nothing, so it needs one.
    ParamSpec(
        "max_proposals",
        MAX_PROPOSALS,
        "Keep at most this many (ChatRex has 100 index tokens).",
        minimum=max(1, MAX_COUNT_RANGE[0]),
        maximum=MAX_COUNT_RANGE[1],
    ),
    ParamSpec(
        "enabled",
        True,
        "Compute proposals (false: frames are ignored, the model idles; also the `enable` SetBool service).",
    ),
    ParamSpec(
        "max_rate_hz",
        0.0,
        "At most this many frames per second get proposals, the newest one each time (0: every frame the backend "
        "keeps up with).",
        minimum=0.0,
        maximum=1000.0,
    ),
    ParamSpec(
        "mode",
        "continuous",
        "continuous: proposals for every frame the backend keeps up with; on_demand: only for the frames "
        "language_node requests on `proposals/request` (idle graph, no inference).",
        ("continuous", "on_demand"),
    ),
    ParamSpec(
        "on_demand_frames",
        15,
        "mode:=on_demand: newest frames kept (undecoded) for the requests to name.",
        minimum=1,
        maximum=300,
        read_only=True,
    ),
    IMAGE_TRANSPORT,
    MAX_IMAGE_PIXELS_SPEC,
    ParamSpec("warmup", True, "Run the backend once on a blank frame before serving.", read_only=True),
    AUTOSTART,
    ParamSpec(
        "publish_markers",
        False,
        "Publish every frame's proposals as an ImageMarker (thin grey outlines) on `proposals/markers`.",
        read_only=True,
    ),
    ParamSpec(
        "input_silence_s", 5.0, "Warn on /diagnostics when no image arrives for this long.", minimum=0.5, maximum=3600.0
    ),
    *sensor_qos_specs(),
]

LANGUAGE_NODE: list[ParamSpec] = [
    ParamSpec(
        "language_backend",
        NO_LANGUAGE_BACKEND,
        f"Language model backend ('{NO_LANGUAGE_BACKEND}' answers MODEL_ERROR).",
        tuple(LANGUAGE_BACKENDS),
        read_only=True,
        allow_plugin=True,
    ),
    ParamSpec(
        "model_path",
        "",
        "Local ChatRex checkpoint directory (e.g. a download of IDEA-Research/ChatRex-7B).",
        read_only=True,
    ),
    ParamSpec(
        "trust_remote_code", False, "Allow the checkpoint's own Python code to run (ChatRex needs it).", read_only=True
    ),
    ParamSpec(
        "allow_hub_download",
        False,
        "Let the checkpoint's code download the hub repositories it names (e.g. its vision tower) when they are "
        "not in the local Hugging Face cache; off: nothing is ever downloaded.",
        read_only=True,
    ),
    ParamSpec("device", "cuda", "Model device.", ("cpu", "cuda"), read_only=True),
    ParamSpec(
        "dtype",
        "auto",
        "Model dtype (auto: bfloat16 on CUDA, float32 on CPU; autocast-bfloat16: float32 weights under bfloat16 "
        "autocast, the authors' inference).",
        ("auto", "float32", "float16", "bfloat16", "autocast-bfloat16"),
        read_only=True,
    ),
    ParamSpec(
        "backend_options", "", "JSON object of extra keyword arguments for the language backend.", read_only=True
    ),
    ParamSpec("max_new_tokens", 512, "Default generation budget per query.", minimum=1, maximum=8192),
    ParamSpec(
        "query_timeout_s", 60.0, "Default per-query timeout (queue + model), seconds.", minimum=0.01, maximum=3600.0
    ),
    ParamSpec(
        "queue_size", 4, "Queries waiting beyond this are answered BUSY.", minimum=1, maximum=100, read_only=True
    ),
    ParamSpec(
        "frame_cache_size",
        8,
        "Answerable frames (image + proposals) kept; a query names one by stamp or takes the newest.",
        minimum=1,
        maximum=256,
        read_only=True,
    ),
    ParamSpec(
        "recent_images",
        4,
        "Newest images kept until the proposer claims them on `proposals/pending`; "
        "a proposer that does not announce its frames needs rate x latency.",
        minimum=1,
        maximum=256,
        read_only=True,
    ),
    ParamSpec(
        "frame_cache_mb",
        1024,
        "Byte budget of all cached images, MiB: beyond it the least useful go first; a larger image is dropped.",
        minimum=16,
        maximum=1 << 20,
        read_only=True,
    ),
    ParamSpec(
        "pairing_wait_s",
        5.0,
        "How long a query waits for proposals when its frame has none yet.",
        minimum=0.0,
        maximum=60.0,
    ),
    ParamSpec(
        "proposals_on_demand",
        False,
        "Request proposals for each query's frame on `proposals/request` (proposal_node in mode:=on_demand).",
    ),
    ParamSpec(
        "input_silence_s",
        5.0,
        "Warn on /diagnostics when an input (image, proposals) delivers nothing for this long.",
        minimum=0.5,
        maximum=3600.0,
    ),
    ParamSpec(
        "publish_annotated", False, "Publish the answered frame with boxes drawn on `answer_image`.", read_only=True
    ),
    AUTOSTART,
    ParamSpec(
        "publish_markers",
        False,
        "Publish each answer's detections (a colour per phrase) and queried regions as an ImageMarker on "
        "`answer/markers`.",
        read_only=True,
    ),
    IMAGE_TRANSPORT,
    MAX_IMAGE_PIXELS_SPEC,
    *sensor_qos_specs(),
    ParamSpec(
        "vlm.base_url",
        "",
        "language_backend:=openai: the server's OpenAI-compatible API, e.g. http://gpu-host:8000/v1.",
        read_only=True,
    ),
    ParamSpec("vlm.model", "", "The model name the server serves (e.g. Qwen/Qwen2.5-VL-7B-Instruct).", read_only=True),
    ParamSpec(
        "vlm.api_key_env",
        "",
        "Name of the environment variable holding the API key ('' = none; the key itself is never a parameter).",
        read_only=True,
    ),
    ParamSpec(
        "vlm.box_format",
        "pixel",
        "How boxes are written to the model: pixel (Qwen2.5-VL), norm1000 (Qwen2-VL, InternVL), norm1.",
        BOX_FORMATS,
        read_only=True,
    ),
    ParamSpec("vlm.timeout_s", 30.0, "Per-request timeout, seconds.", minimum=0.1, maximum=3600.0, read_only=True),
    ParamSpec(
        "vlm.retries",
        2,
        "Retries with backoff on connection errors, timeouts, 429 and 5xx.",
        minimum=0,
        maximum=10,
        read_only=True,
    ),
    ParamSpec(
        "vlm.match_iou",
        DEFAULT_MATCH_IOU,
        "A box the model draws is the best-overlapping proposal at this IoU or above, else rejected.",
        minimum=0.05,
        maximum=1.0,
        read_only=True,
    ),
]

GRASP_NODE: list[ParamSpec] = [
    ParamSpec("selection", "highest_score", "Which detection of an answer to target.", SELECTIONS),
    ParamSpec(
        "phrase",
        "",
        "With selection=phrase: the grounded phrase to target (case-insensitive; whole words of the label).",
    ),
    ParamSpec(
        "proposal_index",
        -1,
        "With selection=index: the proposal index (<objK>) to target.",
        minimum=-1,
        maximum=MAX_PROPOSALS - 1,
    ),
    ParamSpec(
        "stamp_tolerance_s",
        0.0,
        "Largest difference between the answer's and a depth frame's stamps that still pairs (0 = exact).",
        minimum=0.0,
        maximum=1.0,
    ),
    ParamSpec(
        "pairing_timeout_s",
        2.0,
        "How long an answer waits for its depth frame before it is published as stale.",
        minimum=0.0,
        maximum=60.0,
    ),
    ParamSpec(
        "margin",
        0.1,
        "Fraction of the box's width/height removed on each side before the depth statistics.",
        minimum=0.0,
        maximum=0.45,
    ),
    ParamSpec(
        "percentile",
        50.0,
        "Depth percentile of the used pixels that becomes the target's z.",
        minimum=0.0,
        maximum=100.0,
    ),
    ParamSpec(
        "foreground", True, "Use only the nearest dense depth mode in the box (the object, not the wall behind it)."
    ),
    ParamSpec(
        "approach",
        "camera_ray",
        "grasp_pose +X: along the camera ray to the point, or into the fitted surface (-normal; the ray when no "
        "plane fits, said in `note`).",
        APPROACHES,
    ),
    ParamSpec(
        "surface_radius_m",
        DEFAULT_SURFACE_RADIUS_M,
        "The surface normal is fitted to the object's points within this distance of the target.",
        minimum=0.005,
        maximum=0.5,
    ),
    ParamSpec(
        "min_surface_points",
        DEFAULT_MIN_SURFACE_POINTS,
        "Fewer points within surface_radius_m: no normal.",
        minimum=3,
        maximum=100_000,
    ),
    ParamSpec(
        "plane_tolerance",
        DEFAULT_PLANE_TOLERANCE,
        "A point is on a fitted plane within this share of its depth (0.01: 1 cm at 1 m).",
        minimum=0.001,
        maximum=0.2,
    ),
    ParamSpec(
        "publish_points",
        False,
        "Publish the object's points on `grasp_points` (PointCloud2, float32 xyz, depth frame).",
        read_only=True,
    ),
    ParamSpec(
        "publish_mask",
        False,
        "Publish the depth-aligned mask of the object's pixels on `grasp_mask` (mono8, 255 = used).",
        read_only=True,
    ),
    ParamSpec(
        "points_voxel_m",
        0.005,
        "Voxel size the published points are thinned to (one centroid per voxel), metres.",
        minimum=0.0005,
        maximum=0.1,
    ),
    ParamSpec(
        "max_points",
        5000,
        "At most this many published points (the voxel grows until they fit).",
        minimum=1,
        maximum=1_000_000,
    ),
    ParamSpec(
        "depth_scale",
        0.0,
        "Metres per depth unit; 0 = REP 118 (16UC1 millimetres, 32FC1 metres).",
        minimum=0.0,
        maximum=1.0,
    ),
    # Plausibility: a target at the lens (1e-30 m), kilometres away or kilometres sideways (fx = 1e-3) is a
    # sensor or publisher fault. Defaults are chatrex_ros.core.grasp's DEFAULT_DEPTH_RANGE_M / _FOCAL_RANGE_PX.
    ParamSpec(
        "min_depth_m",
        0.05,
        "Nearest plausible depth; nearer pixels are not valid depth (must be below max_depth_m).",
        minimum=0.001,
        maximum=100.0,
    ),
    ParamSpec(
        "max_depth_m",
        20.0,
        "Farthest plausible depth; farther pixels are not valid depth.",
        minimum=0.01,
        maximum=1000.0,
    ),
    ParamSpec(
        "min_focal_px",
        10.0,
        "Smallest plausible fx/fy of a camera_info; outside min..max every target is refused with why.",
        minimum=0.1,
        maximum=1.0e6,
    ),
    ParamSpec(
        "max_focal_px",
        100000.0,
        "Largest plausible fx/fy of a camera_info (must be above min_focal_px).",
        minimum=1.0,
        maximum=1.0e7,
    ),
    ParamSpec(
        "color_width",
        0,
        "Colour image width when no `color/camera_info` arrives (boxes scaled by size ratio); "
        "0 = boxes already in depth pixels.",
        minimum=0,
        maximum=16384,
    ),
    ParamSpec("color_height", 0, "Colour image height, as color_width.", minimum=0, maximum=16384),
    ParamSpec(
        "depth_buffer_size",
        30,
        "Recent depth frames kept for pairing by stamp.",
        minimum=1,
        maximum=300,
        read_only=True,
    ),
    ParamSpec(
        "pinned_frames",
        8,
        "Depth frames kept because proposals were computed for them (0 = do not subscribe `proposals`).",
        minimum=0,
        maximum=64,
        read_only=True,
    ),
    ParamSpec(
        "depth_buffer_mb",
        512,
        "Byte budget of all buffered depth frames, MiB: beyond it the oldest go first; a larger frame is dropped.",
        minimum=16,
        maximum=1 << 20,
        read_only=True,
    ),
    ParamSpec(
        "input_silence_s",
        5.0,
        "Warn on /diagnostics when depth or its camera_info delivers nothing for this long.",
        minimum=0.5,
        maximum=3600.0,
    ),
    *sensor_qos_specs("depth_qos", "Depth and camera_info"),
]


_TABLES: dict[type, list[ParamSpec]] = {
    ProposalNodeParams: PROPOSAL_NODE,
    LanguageNodeParams: LANGUAGE_NODE,
    GraspNodeParams: GRASP_NODE,
}

NODE_TABLES: dict[str, list[ParamSpec]] = {
    "proposal_node": PROPOSAL_NODE,
    "language_node": LANGUAGE_NODE,
    "grasp_target_node": GRASP_NODE,
}
"""Each node's table by node name."""


def resolved(cls: type[P], values: Mapping[str, Any] | None = None) -> P:
    """A node's parameters from loose values (defaults filled, nested names flattened; ValueError on a bad one)."""
    return typed(cls, resolve(_TABLES[cls], values or {}))


def typed(cls: type[P], values: Mapping[str, Any]) -> P:
    """The frozen dataclass ``cls`` filled from resolved values with dotted names (``image_qos.depth``)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            prefix = f"{field.name}."
            nested = {key[len(prefix) :]: value for key, value in values.items() if key.startswith(prefix)}
            kwargs[field.name] = typed(hint, nested)
        else:
            kwargs[field.name] = values[field.name]
    return cls(**kwargs)


def flat_values(params: object, prefix: str = "") -> dict[str, Any]:
    """A node's dataclass back as ROS parameter names and values (the inverse of :func:`typed`)."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(params):  # type: ignore[arg-type]
        value = getattr(params, field.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_values(value, f"{prefix}{field.name}."))
        else:
            flat[f"{prefix}{field.name}"] = value
    return flat


def with_changes(params: P, changed: Mapping[str, Any]) -> P:
    """``params`` with some parameters (by ROS name) changed, as a runtime parameter set delivers them."""
    return typed(type(params), {**flat_values(params), **changed})
