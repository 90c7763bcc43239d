"""`chatrex-ros doctor` on this CPU machine: a truthful table, and each ✖ case built by the test.

Where a check is about something this machine cannot have (TensorRT 11, a CUDA 12 driver, a GPU with 8 GB
free), the package's own lookup functions are replaced by test doubles that report it; everything else
(configuration resolution, checkpoint reading, the ChatRex scan, the table, the exit status) runs for real.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
import types
import uuid
from pathlib import Path

import pytest

from chatrex_ros import doctor
from chatrex_ros.cli import main

HAS_TRANSFORMERS = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))
if HAS_TRANSFORMERS:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="chatrex_test_hf_modules_"))
    from fixtures.tiny_chatrex import make_tiny_chatrex

TINY_WEIGHTS = Path(__file__).parent / "data" / "upn" / "tiny_state_dict.safetensors"


def run_doctor(capsys, *sets: str) -> tuple[int, dict[str, doctor.Check]]:
    code = main(["doctor", "--json", *[arg for s in sets for arg in ("--set", s)]])
    checks = [doctor.Check(**entry) for entry in json.loads(capsys.readouterr().out)]
    return code, {check.name: check for check in checks}


def test_the_default_graph_passes_and_says_what_it_did_not_check(capsys) -> None:
    code, checks = run_doctor(capsys)
    assert code == 0
    assert checks["chatrex_ros messages"].status == doctor.OK
    rclpy = importlib.metadata.version("ros-rclpy")
    distro = {"7": "jazzy", "9": "kilted"}[rclpy.split(".")[0]]
    assert checks["ROS 2"].status == doctor.OK and checks["ROS 2"].detail.startswith(distro)
    import torch

    gpu = checks["GPU"]
    if not torch.cuda.is_available():  # this machine: reported, but nothing configured needs it
        assert gpu.status == doctor.SKIP and "no CUDA" in gpu.detail
    assert checks["UPN checkpoint"].status == doctor.SKIP and checks["ChatRex"].status == doctor.SKIP


def test_the_table_puts_each_fix_under_its_problem_and_counts_them() -> None:
    table = doctor.format_table(
        [doctor.Check("A", doctor.OK, "fine"), doctor.Check("Bee", doctor.FAIL, "broken", "do this")]
    )
    assert table.splitlines() == ["✔ A    fine", "✖ Bee  broken", "       fix: do this", "1 problem(s)"]


def test_tensorrt_configured_on_a_machine_without_it_fails_with_each_fix(capsys, monkeypatch) -> None:
    monkeypatch.setattr(doctor, "_torch", lambda: None)  # test double: a machine without torch, like a robot
    code, checks = run_doctor(capsys, "proposal_node.backend=tensorrt", "proposal_node.onnx=/nowhere/upn.onnx")
    assert code == 1
    assert checks["PyTorch"].status == doctor.FAIL  # the TensorRT backend decodes with torch-free code, but
    assert checks["TensorRT"].status == doctor.FAIL and "chatrex_ros[tensorrt]" in checks["TensorRT"].fix
    assert checks["UPN ONNX"].status == doctor.FAIL and "export-upn" in checks["UPN ONNX"].fix


def test_no_cuda_for_a_cuda_language_model_is_a_failure(capsys, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, checks = run_doctor(capsys, "language_node.language_backend=chatrex", f"language_node.model_path={tmp_path}")
    assert code == 1
    gpu = checks["GPU"]
    assert (
        gpu.status == doctor.FAIL
        and "language_node (chatrex on cuda)" in gpu.detail
        and "--set language_node.device=cpu" in gpu.fix
    )


def _fake_tensorrt(monkeypatch, tensorrt: str, cuda_python: str, driver: str | None) -> None:
    """Test double for installed TensorRT / cuda-python and the driver's CUDA version."""
    versions = {"tensorrt": tensorrt, "cuda-python": cuda_python}
    monkeypatch.setattr(doctor, "_version", lambda name: versions.get(name))
    monkeypatch.setattr(doctor, "_installed", lambda module: module == "tensorrt")
    monkeypatch.setattr(doctor, "_cuda_driver_version", lambda: driver)


def _setup(**proposal: object) -> doctor.Setup:
    return doctor.Setup({"backend": "tensorrt", **proposal}, {"language_backend": "none"}, {}, {})


def test_tensorrt_11_and_a_cuda_python_newer_than_the_driver_are_refused(monkeypatch) -> None:
    _fake_tensorrt(monkeypatch, "11.0.1", "13.0.0", "12.4")
    trt, cuda_python = list(doctor.check_tensorrt(_setup()))
    assert trt.status == doctor.FAIL and "10.x" in trt.detail and "<11" in trt.fix
    assert cuda_python.status == doctor.FAIL and "needs a CUDA 13 driver" in cuda_python.detail
    assert "cuda-python<13" in cuda_python.fix
    _fake_tensorrt(monkeypatch, "10.13.0", "12.9.0", "12.4")
    assert [c.status for c in doctor.check_tensorrt(_setup())] == [doctor.OK, doctor.OK]
    _fake_tensorrt(monkeypatch, "10.13.0", "12.9.0", None)
    assert list(doctor.check_tensorrt(_setup()))[1].fix == "install the NVIDIA driver"


def test_onnx_runtime_on_cuda_without_its_cuda_provider_fails() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    setup = doctor.Setup({"backend": "onnxruntime", "device": "cuda"}, {}, {}, {})
    (check,) = doctor.check_onnxruntime(setup)
    assert check.status == doctor.FAIL and "onnxruntime-gpu" in check.fix
    (on_cpu,) = doctor.check_onnxruntime(doctor.Setup({"backend": "onnxruntime", "device": "cpu"}, {}, {}, {}))
    assert on_cpu.status == doctor.OK


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_complete_checkpoint_passes_and_a_damaged_one_is_named(tmp_path, suffix) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(TINY_WEIGHTS))

    def write(name: str, tensors: dict) -> str:
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".pth":
            torch.save({"model": tensors}, path)
        else:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return str(path)

    def check(path: str, variant: str = "tiny") -> doctor.Check:
        (result,) = doctor.check_upn_checkpoint(_setup(checkpoint=path, model_variant=variant))
        return result

    assert check(write("complete", state)).status == doctor.OK
    dropped = sorted(k for k in state if "relative_position_index" not in k and "bbox_embed" not in k)[0]
    missing = check(write("missing", {k: v for k, v in state.items() if k != dropped}))
    assert missing.status == doctor.FAIL and "1 tensors missing" in missing.detail and dropped in missing.detail
    reshaped = {**state, dropped: torch.zeros(3, 3)}
    wrong = check(write("wrong", reshaped))
    assert wrong.status == doctor.FAIL and f"{dropped} is [3, 3]" in wrong.detail
    assert check(write("complete2", state), variant="large").status == doctor.FAIL  # tiny weights, large model
    assert check(str(tmp_path / "absent.pth")).status == doctor.FAIL


needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs torch + transformers")


def _chatrex_setup(directory: Path, hub_cache: Path, **language: object) -> doctor.Setup:
    params = {"language_backend": "chatrex", "model_path": str(directory), "trust_remote_code": True, **language}
    return doctor.Setup({"backend": "selective_search"}, params, {}, {"HF_HUB_CACHE": str(hub_cache)})


@needs_transformers
def test_a_chatrex_directory_is_checked_for_trust_hub_ids_and_imports(tmp_path) -> None:
    directory = make_tiny_chatrex(tmp_path / f"tiny_chatrex_doctor_{uuid.uuid4().hex[:8]}")
    checks = {c.name: c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path / "hub"))}
    assert all(c.status == doctor.OK for c in checks.values()), checks

    modeling = directory / "modeling_tiny_chatrex.py"
    modeling.write_text(modeling.read_text() + '\nVISION_TOWER = "acme/tower-336"\nimport missing_pkg_for_doctor\n')
    checks = {c.name: c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path / "hub"))}
    assert (
        checks["ChatRex hub ids"].status == doctor.FAIL
        and "hf download acme/tower-336" in checks["ChatRex hub ids"].fix
    )
    assert checks["ChatRex code imports"].status == doctor.FAIL
    assert checks["ChatRex code imports"].fix == "pip install missing-pkg-for-doctor"
    allowed = {
        c.name: c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path / "hub", allow_hub_download=True))
    }
    assert allowed["ChatRex hub ids"].status == doctor.WARN and "fetched at start" in allowed["ChatRex hub ids"].detail

    untrusted = {c.name: c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path, trust_remote_code=False))}
    assert untrusted["ChatRex remote code"].status == doctor.FAIL
    (directory / "tokenizer_config.json").unlink()
    incomplete = {c.name: c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path, trust_remote_code=False))}
    assert incomplete["ChatRex directory"].status == doctor.FAIL
    assert "tokenizer_config.json" in incomplete["ChatRex directory"].detail and incomplete["ChatRex directory"].fix
    # the other checks still report: one run names every problem
    assert incomplete["ChatRex remote code"].status == doctor.FAIL and "transformers" in incomplete
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"")  # a copy that stopped at 0 bytes
    (empty,) = [c for c in doctor.check_chatrex(_chatrex_setup(directory, tmp_path)) if c.name == "ChatRex directory"]
    assert empty.status == doctor.FAIL and "empty weight files model.safetensors" in empty.detail


def test_chatrex_on_the_cpu_is_weighed_against_the_ram() -> None:
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    for dtype, need in (("float32", 30), ("bfloat16", 16)):
        setup = doctor.Setup({}, {"language_backend": "chatrex", "device": "cpu", "dtype": dtype}, {}, {})
        (check,) = doctor.check_host_memory(setup)
        assert check.status == (doctor.FAIL if ram_gb < need else doctor.OK) and f"about {need} GB" in check.detail
    assert list(doctor.check_host_memory(doctor.Setup({}, {"language_backend": "none"}, {}, {}))) == []


def test_gpu_memory_is_weighed_against_the_configured_models(monkeypatch) -> None:
    gib = 2**30
    cuda = types.SimpleNamespace(is_available=lambda: True, mem_get_info=lambda: (8 * gib, 80 * gib))
    monkeypatch.setattr(doctor, "_torch", lambda: types.SimpleNamespace(cuda=cuda))  # test double: a GPU
    setup = doctor.Setup({"backend": "tensorrt"}, {"language_backend": "chatrex", "device": "cuda"}, {}, {})
    (short,) = doctor.check_gpu_memory(setup)
    assert short.status == doctor.FAIL and "need about 18 GB" in short.detail
    cuda.mem_get_info = lambda: (40 * gib, 80 * gib)
    (enough,) = doctor.check_gpu_memory(setup)
    assert enough.status == doctor.OK
    authors = doctor.Setup({}, {"language_backend": "chatrex", "device": "cuda", "dtype": "autocast-bfloat16"}, {}, {})
    (fp32,) = doctor.check_gpu_memory(authors)
    assert fp32.status == doctor.OK and "need about 30 GB" in fp32.detail


def test_a_check_that_crashes_is_a_failure_of_that_check_not_of_the_doctor(monkeypatch) -> None:
    def broken(setup: doctor.Setup):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr(doctor, "CHECKS", (broken, lambda setup: doctor.check_python()))
    results = doctor.run_checks(_setup())
    assert [(r.name, r.status) for r in results] == [("broken", doctor.FAIL), ("Python", doctor.OK)]
    assert "RuntimeError: boom" in results[0].detail


def test_a_bad_override_is_a_usage_error(capsys) -> None:
    assert main(["doctor", "--set", "proposal_node.no_such_parameter=1"]) == 2
    assert "no_such_parameter" in capsys.readouterr().err


def test_the_engine_check_says_whether_the_node_would_build_at_start(tmp_path, monkeypatch) -> None:
    onnx = tmp_path / "upn.onnx"
    onnx.write_bytes(b"not read by the double")
    setup = _setup(onnx=str(onnx), precision="auto", engine_cache_dir=str(tmp_path), gpu_index=1)
    if importlib.util.find_spec("tensorrt") is None:  # this machine: the key needs TensorRT and the GPU
        checks = {c.name: c for c in doctor.check_onnx_and_engine(setup)}
        assert checks["UPN ONNX"].status == doctor.OK
        assert checks["TensorRT engine"].status == doctor.SKIP and "not checked" in checks["TensorRT engine"].detail

    from chatrex_ros.models.upn import runtime_tensorrt

    asked = []

    def cached_engine(path, cache_dir, precision, gpu_index):  # test double: TensorRT's part of the key
        asked.append((path, cache_dir, precision, gpu_index))
        return types.SimpleNamespace(is_valid=lambda: built, engine_path=tmp_path / "x.engine")

    monkeypatch.setattr(runtime_tensorrt, "cached_engine", cached_engine)
    built = False
    engine = list(doctor.check_onnx_and_engine(setup))[-1]
    assert asked == [(str(onnx), str(tmp_path), "fp16", 1)]  # `auto` is fp16 for TensorRT, the node's GPU
    assert engine.status == doctor.WARN and f"build-engine --onnx {onnx} --precision fp16" in engine.fix
    built = True
    assert list(doctor.check_onnx_and_engine(setup))[-1].status == doctor.OK


def test_it_takes_the_options_of_up(capsys) -> None:
    """The README's robot command line, with `doctor` for `up`: the same graph, checked."""
    assert main(["doctor", "--image", "/camera/camera/color/image_raw", "--grasp", "--on-demand"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("no problems found")
