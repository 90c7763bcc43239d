"""UPN proposal backends on the tiny model: torch, ONNX export + ONNX Runtime, TensorRT start-up, the engine cache."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.core.proposals import select_proposals
from chatrex_ros.models.base import ProposalBackend, ProposalPipeline, SelectionPolicy
from chatrex_ros.models.registry import make_proposal_backend
from chatrex_ros.models.upn.engine_cache import BuilderSettings, EngineKey, cache_entry
from chatrex_ros.models.upn.processing import decode_outputs

skimage_data = pytest.importorskip("skimage.data", reason="the golden images come from scikit-image's bundled data")

DATA = Path(__file__).parent / "data" / "upn"
WEIGHTS = str(DATA / "tiny_state_dict.safetensors")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "tiny_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage_data.coffee()  # 600x400: the tiny resize gives 373x559, the golden coffee input


@pytest.fixture(scope="module")
def torch_backend():
    return make_proposal_backend("torch", checkpoint=WEIGHTS, variant="tiny", granularity="coarse")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The tiny model exported through the CLI subcommand, as a user would."""
    from chatrex_ros.commands import upn as upn_commands

    out = tmp_path_factory.mktemp("onnx") / "upn_tiny_coarse.onnx"
    parser = argparse.ArgumentParser()
    upn_commands.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "export-upn",
            "--checkpoint",
            WEIGHTS,
            "--variant",
            "tiny",
            "--camera",
            "600x400",
            "--prompt",
            "coarse",
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    return out


@pytest.fixture(scope="module")
def torch_outputs(torch_backend, golden) -> tuple[np.ndarray, np.ndarray]:
    """Raw torch outputs for the coffee input (prepare_image(coffee) equals it bit for bit, see test_upn_processing)."""
    return torch_backend.infer(golden["coffee__input"])


def test_torch_backend_reproduces_the_golden_proposals(torch_backend, torch_outputs, golden, coffee):
    assert isinstance(torch_backend, ProposalBackend) and torch_backend.name == "torch"
    np.testing.assert_allclose(torch_outputs[0], golden["coffee__coarse__pred_boxes"], atol=1e-5, rtol=0)
    raw = decode_outputs(torch_outputs[0][0], torch_outputs[1][0], coffee.shape[:2])
    order = golden["coffee__coarse__post_order"][0]
    np.testing.assert_allclose(raw.boxes[order], golden["coffee__coarse__post_boxes_xyxy"][0], atol=1e-2, rtol=0)


def test_bfloat16_autocast_keeps_selection_and_box_head_in_float32(golden):
    import torch

    backend = make_proposal_backend("torch", checkpoint=WEIGHTS, variant="tiny", granularity="coarse", dtype="bfloat16")
    boxes, logits = backend.infer(np.zeros((1, 3, 128, 128), dtype=np.float32))
    assert boxes.dtype == np.float32 and boxes.shape == (1, 100, 4) and np.isfinite(logits).all()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        trace = backend.model.trace(torch.from_numpy(golden["coffee__input"]), "coarse")
    assert trace["memory"].dtype == torch.bfloat16  # autocast really ran the encoder in bf16
    for name in ("enc_logits", "dec_init_refpoint_unsig", "dec_references", "pred_boxes", "pred_logits"):
        assert trace[name].dtype == torch.float32, name
    selected = set(trace["enc_topk_indices"][0].tolist())
    assert len(selected & set(golden["coffee__coarse__enc_topk_indices"][0].tolist())) >= 90


def test_onnx_export_runs_in_onnxruntime_like_pytorch(exported, torch_outputs, coffee, golden):
    backend = make_proposal_backend("onnxruntime", onnx_path=str(exported), providers=["CPUExecutionProvider"])
    assert backend.provider == "CPUExecutionProvider"
    assert backend.input_hw == (373, 559) and backend.prompt == "coarse"
    ort_boxes, ort_logits = backend.infer(golden["coffee__input"])
    np.testing.assert_allclose(ort_boxes, torch_outputs[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_logits, torch_outputs[1], atol=1e-3, rtol=0)
    # the whole path: same pre-processing, same decoding, same selection -> the same kept proposals
    proposals = ProposalPipeline(backend, SelectionPolicy(min_score=0.3, nms_iou=0.8)).run(coffee)
    theirs = decode_outputs(torch_outputs[0][0], torch_outputs[1][0], coffee.shape[:2])
    keep_torch = select_proposals(theirs.boxes, theirs.scores, 0.3, 0.8, 100)
    np.testing.assert_allclose(proposals.boxes, theirs.boxes[keep_torch], atol=0.1, rtol=0)
    expected = golden["coffee__coarse__filt_s030_n080_boxes"]
    assert len(proposals) == len(expected) == 84 and proposals.backend == "onnxruntime"
    np.testing.assert_allclose(np.sort(proposals.boxes.astype(np.int32), axis=0), np.sort(expected, axis=0), atol=1)
    backend.warmup()
    with pytest.raises(ValueError, match="export-upn --size"):
        backend.propose(skimage_data.astronaut())  # 512x512 needs its own export


def test_onnx_metadata_records_the_resize_rule(exported):
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(exported), load_external_data=False).metadata_props}
    assert metadata["chatrex_ros.upn.resize_short"] == "400" and metadata["chatrex_ros.upn.input_hw"] == "373x559"
    patterns = json.loads(metadata["chatrex_ros.upn.fp32_name_patterns"])
    names = [n.name for n in onnx.load(str(exported), load_external_data=False).graph.node]
    for pattern in patterns:  # every fp32 pin of a TensorRT build must hit real nodes
        assert any(pattern in name for name in names), pattern
    assert any("/query_selection/" in n and "TopK" in n for n in names)


def test_backend_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="unknown proposal backend"):
        make_proposal_backend("openvino")
    with pytest.raises(FileNotFoundError, match="export-upn"):
        make_proposal_backend("onnxruntime", onnx_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(FileNotFoundError, match="upn-large"):
        make_proposal_backend("torch", checkpoint=str(tmp_path / "missing.pth"), variant="tiny")
    with pytest.raises(ValueError, match="dtype"):
        make_proposal_backend("torch", checkpoint=WEIGHTS, variant="tiny", dtype="int8")
    with pytest.raises(ValueError, match="unknown UPN prompt"):
        make_proposal_backend("torch", checkpoint=None, variant="tiny", granularity="medium", random_weights=True)


@pytest.mark.parametrize("checkpoint", [None, ""])
def test_torch_backend_without_a_checkpoint_refuses_to_start(checkpoint):
    """No checkpoint (None from Python, "" from the node parameter) never means random weights silently."""
    with pytest.raises(ValueError, match=r"checkpoint:=/path/to/upn_large\.pth") as raised:
        make_proposal_backend("torch", checkpoint=checkpoint, variant="tiny")
    message = str(raised.value)
    assert "\n" not in message and "model_variant" in message and "random_weights=True" in message
    with pytest.raises(ValueError, match="not both"):
        make_proposal_backend("torch", checkpoint=WEIGHTS, variant="tiny", random_weights=True)


def test_torch_backend_random_weights_only_when_asked():
    backend = make_proposal_backend("torch", checkpoint=None, variant="tiny", random_weights=True)
    boxes, logits = backend.infer(np.zeros((1, 3, 64, 64), np.float32))
    assert boxes.shape[:2] == logits.shape[:2] and np.isfinite(boxes).all()


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime to reach the provider check"
)
def test_onnxruntime_refuses_providers_it_does_not_have(exported):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the missing-provider path cannot be exercised")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        make_proposal_backend("onnxruntime", onnx_path=str(exported), providers=["CUDAExecutionProvider"])


def test_tensorrt_backend_without_tensorrt_fails_at_start_up(exported, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the missing-package path cannot be exercised")
    with pytest.raises(ImportError, match=r"pip install chatrex_ros\[tensorrt\]"):
        make_proposal_backend("tensorrt", onnx_path=str(exported), engine_cache_dir=str(tmp_path))
    from chatrex_ros.commands import upn as upn_commands

    parser = argparse.ArgumentParser()
    upn_commands.register(parser.add_subparsers())
    args = parser.parse_args(
        ["build-engine", "--onnx", str(exported), "--cache-dir", str(tmp_path), "--precision", "fp32"]
    )
    assert args.func(args) == 1
    assert "pip install chatrex_ros[tensorrt]" in capsys.readouterr().err


# --- engine cache (pure Python: runs without TensorRT) ---------------------------------------------------


BUILDER = BuilderSettings(workspace_bytes=4 << 30, optimization_level=3, tf32=False, fp32_rule="2")


def key(**changes) -> EngineKey:
    values = dict(
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        tensorrt_version="10.3.0",
        precision="fp16",
        input_shape=(1, 3, 750, 1333),
        onnx_sha256="a" * 64,
        builder=BUILDER,
        package_version="0.1.0",
    )
    values.update(changes)
    return EngineKey(**values)


@pytest.mark.parametrize(
    "change",
    [
        {"gpu_name": "NVIDIA RTX 4090"},
        {"compute_capability": "8.9"},
        {"tensorrt_version": "10.4.0"},
        {"precision": "fp32"},
        {"input_shape": (1, 3, 800, 1066)},
        {"onnx_sha256": "b" * 64},
        {"builder": BuilderSettings(2 << 30, 3, False, "2")},
        {"builder": BuilderSettings(4 << 30, 5, False, "2")},
        {"builder": BuilderSettings(4 << 30, 3, True, "2")},
        {"builder": BuilderSettings(4 << 30, 3, False, "3")},
        {"package_version": "0.2.0"},
    ],
)
def test_any_key_change_selects_another_engine_file(tmp_path, change):
    entry, changed = cache_entry(tmp_path, key()), cache_entry(tmp_path, key(**change))
    assert entry.engine_path != changed.engine_path and entry.lock_path != changed.lock_path
    entry.store(b"plan")
    assert entry.is_valid() and not changed.is_valid()


def test_cache_entry_is_valid_only_after_a_complete_store(tmp_path):
    entry = cache_entry(tmp_path / "engines", key())
    assert not entry.is_valid()
    entry.store(b"plan bytes")
    assert entry.is_valid() and entry.engine_path.read_bytes() == b"plan bytes"
    assert "750x1333_fp16_NVIDIA-H100-80GB-HBM3_sm90_trt10.3.0" in entry.engine_path.name
    entry.sidecar_path.write_text(json.dumps({"precision": "fp32"}))  # a sidecar from another key
    assert not entry.is_valid()
    entry.store(b"plan bytes")
    entry.engine_path.write_bytes(b"")
    assert not entry.is_valid()
    assert not list((tmp_path / "engines").glob("*.tmp"))


def test_engine_key_validation():
    with pytest.raises(ValueError, match="precision"):
        key(precision="int8")
    with pytest.raises(ValueError, match="sha256"):
        key(onnx_sha256="xyz")
    with pytest.raises(ValueError, match="static"):
        key(input_shape=(1, 3, -1, 1333))
    with pytest.raises(ValueError, match="compute_capability"):
        key(compute_capability="sm_90")


# --- TensorRT build logic against a stand-in for the tensorrt module (TensorRT itself is not installable here)


class FakeTensorRTModule:
    """Test double of the ``tensorrt`` module as TensorRT 11 is: no weak typing flags."""

    float32, float16, int32, bool_ = "float32", "float16", "int32", "bool"

    class BuilderFlag:  # TensorRT 11 style: no weak typing flags
        TF32 = "tf32"

    __version__ = "11.0.0"


# The fp32 pinning rule and the fp16 build are tested in test_tensorrt_precision.py.


def test_fp16_on_tensorrt_without_weak_typing_says_what_to_do(tmp_path):
    from chatrex_ros.models.upn.runtime_tensorrt import build_serialized_engine

    with pytest.raises(RuntimeError, match="precision='fp32'"):
        build_serialized_engine(FakeTensorRTModule, None, tmp_path / "upn.onnx", "fp16", ())


def test_user_paths_expand_the_home_directory(monkeypatch, tmp_path) -> None:
    """Node parameters such as engine_cache_dir default to '~/...'; no literal '~' directory may appear."""
    from chatrex_ros.models.upn.artifacts import require_file
    from chatrex_ros.models.upn.checkpoint import read_state_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes((Path(__file__).parent / "data" / "upn" / "tiny_state_dict.safetensors").read_bytes())
    assert require_file("~/tiny.safetensors", "UPN weights", "") == weights
    assert len(read_state_dict("~/tiny.safetensors")) > 0
    assert cache_entry("~/engines", key()).engine_path.is_relative_to(tmp_path / "engines")
