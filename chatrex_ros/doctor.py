"""`chatrex-ros doctor`: checks of a machine against the graph ``chatrex-ros up`` would start, each with its fix.

Every check reads; nothing loads a model, builds an engine, starts a node or touches the network. Each
returns :class:`Check` records; a check whose subject is not configured (no UPN checkpoint with the default
selective-search proposer, no ChatRex directory with no language model) is ``skip``, not a failure, so
the table a robot engineer pastes into a bug report says what was and was not looked at.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
SYMBOLS = {OK: "✔", WARN: "!", FAIL: "✖", SKIP: "–"}
RCLPY_MAJOR_TO_DISTRO = {"7": "jazzy", "9": "kilted"}
TORCH_BACKENDS = ("torch",)
CHATREX_MEMORY_GB = {"bfloat16": 16.0, "float16": 16.0, "float32": 30.0, "autocast-bfloat16": 30.0}
"""Weight memory of ChatRex-7B by dtype (its 15.7 GB of bf16 shards, doubled in fp32), before activations."""
UPN_MEMORY_GB = 2.0
"""UPN-large at 750x1333: 0.9 GB of fp32 weights plus its activations, rounded up."""


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return asdict(self)


@dataclass(frozen=True)
class Setup:
    """What the checks need to know of the graph: the resolved parameters of its nodes and the DDS settings."""

    proposal: Mapping[str, Any]
    language: Mapping[str, Any]
    up_environment: Mapping[str, str]  # what `up` gives its nodes
    shell_environment: Mapping[str, str]  # what a camera driver started from this shell gets

    @property
    def proposal_backend(self) -> str:
        """proposal_node's ``backend``."""
        return str(self.proposal.get("backend", ""))

    @property
    def uses_chatrex(self) -> bool:
        """Whether language_node runs ChatRex."""
        return self.language.get("language_backend") == "chatrex"

    def needs_cuda(self) -> list[str]:
        """Which configured parts run on CUDA (empty when none does)."""
        parts = []
        if self.proposal_backend == "tensorrt":
            parts.append("proposal_node (TensorRT runs only on a CUDA GPU)")
        elif str(self.proposal.get("device", "cpu")).startswith("cuda"):
            parts.append(f"proposal_node (backend {self.proposal_backend} on {self.proposal.get('device')})")
        if self.uses_chatrex and str(self.language.get("device", "")).startswith("cuda"):
            parts.append(f"language_node (chatrex on {self.language.get('device')})")
        return parts


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- the platform


def check_python() -> Iterator[Check]:
    """The interpreter (pip enforced 3.10+ at install)."""
    yield Check("Python", OK, f"{platform.python_version()} ({sys.executable})")


def check_ros() -> Iterator[Check]:
    """That rclpy imports, is Jazzy or Kilted, and the package's messages were generated."""
    rclpy = _version("ros-rclpy")
    if not _installed("rclpy"):
        yield Check("ROS 2", FAIL, "rclpy does not import", "pip install chatrex_ros (ROS_DISTRO=jazzy for Jazzy)")
        return
    if rclpy is None:
        yield Check("ROS 2", OK, "rclpy from a ROS 2 install (not the PyPI wheels)")
    else:
        distro = RCLPY_MAJOR_TO_DISTRO.get(rclpy.split(".")[0])
        if distro is None:
            yield Check(
                "ROS 2", FAIL, f"rclpy {rclpy}: not Jazzy or Kilted", "reinstall with ROS_DISTRO=jazzy or kilted"
            )
        else:
            fastdds = _version("ros-fastdds") or _version("ros-fastrtps") or "?"
            yield Check("ROS 2", OK, f"{distro} (PyPI wheels: rclpy {rclpy}, Fast DDS {fastdds})")
    try:
        importlib.import_module("chatrex_ros.msg")
    except ImportError as error:
        yield Check(
            "chatrex_ros messages",
            FAIL,
            f"do not import ({error})",
            "reinstall the package (pip install .) or source the colcon workspace",
        )
    else:
        yield Check("chatrex_ros messages", OK, "generated and importable")


def check_fastdds_profile(setup: Setup) -> Iterator[Check]:
    """The profile `up` gives the nodes parses; warn when this shell would start a driver without it."""
    from chatrex_ros.launcher import fastdds_profile_variable

    variable = fastdds_profile_variable(setup.shell_environment)
    path = Path(setup.up_environment.get(variable, ""))
    try:
        ElementTree.parse(path)
    except (OSError, ElementTree.ParseError) as error:
        yield Check("Fast DDS profile", FAIL, f"{path}: {error}", f"point {variable} at a valid file")
        return
    yield Check("Fast DDS profile", OK, f"`up` gives the nodes {path} ({variable})")
    if not setup.shell_environment.get(variable):
        yield Check(
            "Fast DDS profile (this shell)",
            WARN,
            f"{variable} not set here: a camera driver started from this shell sends frames outside shared memory",
            f"export {variable}={path} RMW_FASTRTPS_USE_QOS_FROM_XML=0 before starting it",
        )


# --------------------------------------------------------------------------- GPU, CUDA, TensorRT, ONNX Runtime


def _torch() -> Any | None:
    if not _installed("torch"):
        return None
    import torch

    return torch


def check_cuda(setup: Setup) -> Iterator[Check]:
    """PyTorch and the GPUs it sees; a failure only where a configured part runs on CUDA."""
    needed = setup.needs_cuda()
    torch = _torch()
    if torch is None:
        status = FAIL if needed or setup.proposal_backend in TORCH_BACKENDS or setup.uses_chatrex else SKIP
        yield Check("PyTorch", status, "not installed", "pip install 'chatrex_ros[torch]'" if status == FAIL else "")
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    if not torch.cuda.is_available():
        detail = f"torch {torch.__version__} ({build}): no CUDA"
        yield Check(
            "GPU",
            FAIL if needed else SKIP,
            detail + (f"; needed by {', '.join(needed)}" * bool(needed)),
            _cuda_fix(setup),
        )
        return
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    yield Check("GPU", OK, f"torch {torch.__version__} ({build}): {', '.join(names)}")


def _cuda_fix(setup: Setup) -> str:
    """What to do without CUDA: a CUDA machine, or the CPU alternative of each part that needs CUDA."""
    alternatives = []
    if setup.proposal_backend == "tensorrt":
        alternatives.append("--set proposal_node.backend=onnxruntime (or torch) on the CPU")
    elif str(setup.proposal.get("device", "cpu")).startswith("cuda"):
        alternatives.append("--set proposal_node.device=cpu")
    if setup.uses_chatrex and str(setup.language.get("device", "")).startswith("cuda"):
        alternatives.append("--set language_node.device=cpu")
    return (
        f"a CUDA machine with the torch build for its driver, or {' and '.join(alternatives)}" if alternatives else ""
    )


def check_tensorrt(setup: Setup) -> Iterator[Check]:
    """TensorRT 10.x and a cuda-python whose major version the driver supports."""
    needed = setup.proposal_backend == "tensorrt"
    version = _version("tensorrt") or (_version("tensorrt-cu12") if _installed("tensorrt") else None)
    if version is None or not _installed("tensorrt"):
        status = FAIL if needed else SKIP
        fix = "pip install 'chatrex_ros[tensorrt]' on the CUDA machine" if needed else ""
        yield Check("TensorRT", status, "not installed" + (" (backend tensorrt)" if needed else ""), fix)
        return
    major = version.split(".")[0]
    if major != "10":
        yield Check("TensorRT", FAIL, f"{version}: supported is 10.x", "pip install 'tensorrt>=10,<11'")
    else:
        yield Check("TensorRT", OK, version)
    cuda_python = _version("cuda-python")
    if cuda_python is None:
        yield Check("cuda-python", FAIL if needed else WARN, "not installed", "pip install 'chatrex_ros[tensorrt]'")
        return
    driver = _cuda_driver_version()
    detail = f"{cuda_python}; driver supports CUDA {driver}" if driver else f"{cuda_python}; no CUDA driver found"
    binding_major = int(cuda_python.split(".")[0])
    if driver is None:
        yield Check("cuda-python", FAIL if needed else WARN, detail, "install the NVIDIA driver")
    elif int(driver.split(".")[0]) < binding_major:
        yield Check(
            "cuda-python",
            FAIL,
            f"{detail}: cuda-python {binding_major} needs a CUDA {binding_major} driver",
            f"pip install 'cuda-python<{binding_major}' (or update the driver)",
        )
    else:
        yield Check("cuda-python", OK, detail)


def _cuda_driver_version() -> str | None:
    """The CUDA version the driver supports ('12.4'), from libcuda through cuda-python; None without a driver."""
    try:
        from cuda import cuda

        error, version = cuda.cuDriverGetVersion()
        if int(error) != 0:
            return None
    except Exception:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def check_onnxruntime(setup: Setup) -> Iterator[Check]:
    """ONNX Runtime and its providers (CUDA where the ONNX backend is set to run on it)."""
    needed = setup.proposal_backend == "onnxruntime"
    if not _installed("onnxruntime"):
        status = FAIL if needed else SKIP
        yield Check("ONNX Runtime", status, "not installed", "pip install 'chatrex_ros[onnx]'" if needed else "")
        return
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    wants_cuda = needed and str(setup.proposal.get("device", "cpu")).startswith("cuda")
    if wants_cuda and "CUDAExecutionProvider" not in providers:
        yield Check(
            "ONNX Runtime",
            FAIL,
            f"{onnxruntime.__version__}: providers {', '.join(providers)} (no CUDA)",
            "pip install onnxruntime-gpu (and uninstall onnxruntime), or device:=cpu",
        )
    else:
        yield Check("ONNX Runtime", OK, f"{onnxruntime.__version__}: providers {', '.join(providers)}")


def check_host_memory(setup: Setup) -> Iterator[Check]:
    """ChatRex on the CPU holds its weights in RAM: the machine's memory against that."""
    if not setup.uses_chatrex or str(setup.language.get("device", "")).startswith("cuda"):
        return
    dtype = _chatrex_dtype(setup)
    need = CHATREX_MEMORY_GB.get(dtype, 30.0)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    detail = f"{total:.0f} GB of RAM; ChatRex-7B in {dtype} on the CPU needs about {need:.0f} GB"
    if total < need:
        yield Check("RAM", FAIL, detail, "a machine with more memory, or --set language_node.device=cuda on a GPU")
    else:
        yield Check("RAM", OK, detail)


def check_gpu_memory(setup: Setup) -> Iterator[Check]:
    """Free GPU memory against what the configured models need."""
    torch = _torch()
    if not setup.needs_cuda():
        yield Check("GPU memory", SKIP, "no CUDA part configured")
        return
    if torch is None or not torch.cuda.is_available():
        yield Check("GPU memory", SKIP, "no CUDA here (see GPU above)")
        return
    need = 0.0
    if setup.uses_chatrex:
        need += CHATREX_MEMORY_GB.get(_chatrex_dtype(setup), 16.0)
    if setup.proposal_backend in ("tensorrt", *TORCH_BACKENDS, "onnxruntime"):
        need += UPN_MEMORY_GB
    free, total = torch.cuda.mem_get_info()
    detail = f"{free / 2**30:.1f} GB free of {total / 2**30:.1f} GB; the configured models need about {need:.0f} GB"
    if free / 2**30 < need:
        yield Check("GPU memory", FAIL, detail, "free the GPU, use dtype:=bfloat16, or a GPU with more memory")
    else:
        yield Check("GPU memory", OK, detail)


def _chatrex_dtype(setup: Setup) -> str:
    dtype = str(setup.language.get("dtype", "auto"))
    if dtype != "auto":
        return dtype
    return "bfloat16" if str(setup.language.get("device", "")).startswith("cuda") else "float32"


# --------------------------------------------------------------------------- the models


def check_upn_checkpoint(setup: Setup) -> Iterator[Check]:
    """The configured UPN checkpoint holds every tensor of its variant, in the right shape."""
    checkpoint = str(setup.proposal.get("checkpoint", "") or "")
    if not checkpoint:
        uses = setup.proposal_backend in TORCH_BACKENDS
        yield Check(
            "UPN checkpoint",
            FAIL if uses else SKIP,
            "not configured" + (f" (backend {setup.proposal_backend} needs one)" if uses else ""),
            "set proposal_node.checkpoint to upn_large.pth" if uses else "",
        )
        return
    from chatrex_ros.models.upn.manifest import checkpoint_manifest_problems

    variant = str(setup.proposal.get("model_variant", "large"))
    try:
        problems = checkpoint_manifest_problems(checkpoint, variant)
    except (OSError, ValueError, ImportError) as error:
        yield Check("UPN checkpoint", FAIL, str(error))  # the message says what to do
        return
    if problems:
        yield Check(
            "UPN checkpoint",
            FAIL,
            f"{checkpoint}: {'; '.join(problems[:3])}",
            f"is it the UPN {variant} checkpoint? (model_variant selects the variant)",
        )
    else:
        yield Check("UPN checkpoint", OK, f"{checkpoint}: every tensor of UPN {variant}, shapes match")


def check_onnx_and_engine(setup: Setup) -> Iterator[Check]:
    """The ONNX file, and for TensorRT whether a matching engine is cached."""
    onnx = str(setup.proposal.get("onnx", "") or "")
    if setup.proposal_backend not in ("onnxruntime", "tensorrt"):
        yield Check("UPN ONNX / engine", SKIP, f"backend {setup.proposal_backend} uses neither")
        return
    if not onnx or not Path(onnx).expanduser().is_file():
        from chatrex_ros.models.upn.artifacts import EXPORT_HINT

        found = f"not found: {onnx}" if onnx else "proposal_node.onnx is not set"
        yield Check("UPN ONNX", FAIL, found, f"{EXPORT_HINT}, then --set proposal_node.onnx=<that file>")
        return
    yield Check("UPN ONNX", OK, onnx)
    if setup.proposal_backend != "tensorrt":
        return
    from chatrex_ros.models.upn.runtime_tensorrt import cached_engine

    precision = str(setup.proposal.get("precision", "auto"))
    precision = "fp16" if precision == "auto" else precision  # what `auto` is for TensorRT
    try:
        entry = cached_engine(
            onnx, str(setup.proposal.get("engine_cache_dir", "")), precision, int(setup.proposal.get("gpu_index", 0))
        )
    except Exception as error:  # no TensorRT / no GPU / a driver mismatch: the engine cannot be keyed here
        yield Check("TensorRT engine", SKIP, f"not checked ({_one_line(error)})")
        return
    if entry.is_valid():
        yield Check("TensorRT engine", OK, f"{precision} engine for this GPU and TensorRT cached: {entry.engine_path}")
    else:
        yield Check(
            "TensorRT engine",
            WARN,
            f"no {precision} engine cached for this GPU, TensorRT and file: the node builds one at start (minutes)",
            f"chatrex-ros build-engine --onnx {onnx} --precision {precision}",
        )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_chatrex(setup: Setup) -> Iterator[Check]:
    """The ChatRex directory: complete, trusted, transformers in range, hub ids cached, imports installed."""
    if not setup.uses_chatrex:
        yield Check("ChatRex", SKIP, f"language_backend is {setup.language.get('language_backend')}")
        return
    from chatrex_ros.models import chatrex
    from chatrex_ros.models.checkpoint_scan import hub_cache_dir, scan_checkpoint

    directory: Path | None = None
    try:
        directory = chatrex.check_model_dir(str(setup.language.get("model_path", "")))
    except (OSError, ValueError) as error:
        message, hint = str(error), chatrex.DOWNLOAD_HINT
        fix = hint if hint in message else "copy the missing files from the download (or download it again)"
        yield Check("ChatRex directory", FAIL, message.replace(f": {hint}", ""), fix)
    else:
        empty = sorted(p.name for p in directory.glob("*.safetensors") if p.stat().st_size == 0)
        if empty:
            yield Check("ChatRex directory", FAIL, f"{directory}: empty weight files {', '.join(empty)}", "copy again")
        else:
            yield Check("ChatRex directory", OK, f"{directory}: complete")
    if setup.language.get("trust_remote_code") is not True:
        yield Check(
            "ChatRex remote code",
            FAIL,
            "trust_remote_code is false: the node refuses to load the checkpoint",
            "--set language_node.trust_remote_code=true (for a checkpoint you trust)",
        )
    transformers = _version("transformers")
    if transformers is None:
        yield Check("transformers", FAIL, "not installed", chatrex.INSTALL_HINT)
    else:
        try:
            chatrex.check_transformers_version(transformers)
            yield Check("transformers", OK, f"{transformers} (supported {chatrex.SUPPORTED_TRANSFORMERS})")
        except ImportError as error:
            yield Check("transformers", FAIL, f"{transformers}", str(error))
    if directory is None:
        return  # the scan reads the directory
    scan = scan_checkpoint(directory)
    cache = hub_cache_dir(setup.shell_environment)
    missing = scan.missing_hub_ids(cache)
    allowed = setup.language.get("allow_hub_download") is True
    if missing:
        status = WARN if allowed else FAIL
        detail = f"not in {cache}: {', '.join(missing)}" + (" (allow_hub_download: fetched at start)" * allowed)
        yield Check("ChatRex hub ids", status, detail, "" if allowed else scan.hub_problems(cache)[0])
    else:
        yield Check("ChatRex hub ids", OK, f"{len(scan.hub_ids)} named, all in {cache}" if scan.hub_ids else "none")
    problem = scan.import_problem()
    named = ", ".join(sorted(scan.imports)) or "none"
    yield Check(
        "ChatRex code imports",
        FAIL if problem else OK,
        problem.split(": pip")[0] if problem else named,
        ("pip" + problem.split(": pip", 1)[1]) if problem else "",
    )


CHECKS: tuple[Callable[[Setup], Iterator[Check]], ...] = (
    lambda setup: check_python(),
    lambda setup: check_ros(),
    check_fastdds_profile,
    check_cuda,
    check_tensorrt,
    check_onnxruntime,
    check_upn_checkpoint,
    check_onnx_and_engine,
    check_chatrex,
    check_host_memory,
    check_gpu_memory,
)


def run_checks(setup: Setup) -> list[Check]:
    """Every check, in table order; a check that crashes is reported as a failure of that check, not raised."""
    results: list[Check] = []
    for check in CHECKS:
        try:
            results.extend(check(setup))
        except Exception as error:  # a doctor that dies tells nothing: report it and go on
            name = re.sub(r"^check_", "", getattr(check, "__name__", "check"))
            results.append(Check(name, FAIL, f"the check itself failed: {type(error).__name__}: {error}"))
    return results


def format_table(results: list[Check]) -> str:
    """The human table: symbol, name, what was found; each fix on the line below its check."""
    width = max(len(check.name) for check in results)
    lines = []
    for check in results:
        lines.append(f"{SYMBOLS[check.status]} {check.name:<{width}}  {check.detail}")
        if check.fix and check.status in (FAIL, WARN):
            lines.append(f"  {'':<{width}}  fix: {check.fix}")
    failed = sum(check.status == FAIL for check in results)
    lines.append(f"{failed} problem(s)" if failed else "no problems found")
    return "\n".join(lines)


def shell_environment() -> dict[str, str]:
    """This process's environment (a function, so tests pass their own)."""
    return dict(os.environ)
