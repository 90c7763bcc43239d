"""ChatRexBackend against a generated ChatRex-shaped checkpoint (test/fixtures/tiny_chatrex.py).

The checkpoint is a tiny random Llama with remote code that follows the official API; its generation
runs the real transformers loop and forces a scripted answer, and it records what it was handed, so
these tests check loading, refusal, dtype/device handling, the exact box list and answer resolution
without the 16 GB model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import tomllib

from chatrex_ros.core.answering import QueryRequest, answer_query
from chatrex_ros.core.types import Proposals
from chatrex_ros.models.base import LanguageBackend
from chatrex_ros.models.chatrex import (
    SUPPORTED_TRANSFORMERS,
    ChatRexBackend,
    RemoteCodeRefused,
    check_model_dir,
    check_transformers_version,
)

HAS_TRANSFORMERS = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="needs torch + transformers: pip install 'chatrex_ros[chatrex]'"
)
if HAS_TRANSFORMERS:
    # transformers copies remote code into this cache, keyed by the checkpoint directory's name; a private
    # cache (set before transformers is imported) keeps test runs from sharing or littering ~/.cache.
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="chatrex_test_hf_modules_"))
    from fixtures.tiny_chatrex import make_tiny_chatrex, read_calls

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
DETECT_ANSWER = "<ground>person</ground><objects><obj2><obj0></objects>"
PROMPT = "Please detect person in this image. Answer the question with object indexes."
# Deliberately not sorted by anything: the model must see exactly this order.
BOXES = np.array(
    [[10.5, 20.25, 60.0, 80.0], [0.0, 0.0, 15.5, 12.0], [30.0, 5.0, 63.0, 47.75], [2.0, 40.0, 9.0, 47.0]],
    dtype=np.float32,
)
IMAGE = np.full((48, 64, 3), 127, dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two shards: the index + shard layout of the real checkpoint.
    return make_tiny_chatrex(tmp_path_factory.mktemp(unique_name("tiny_chatrex")), DETECT_ANSWER, shards=2)


@pytest.fixture(scope="module")
def backend(tiny_dir: Path) -> ChatRexBackend:
    return ChatRexBackend(str(tiny_dir), device="cpu", trust_remote_code=True)


def unique_name(prefix: str) -> str:
    """Checkpoint directory names must be unique: transformers caches remote code by that name."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def script_token_ids(backend: ChatRexBackend, text: str) -> list[int]:
    return backend.processor.tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- loading and generation


@needs_transformers
def test_loads_through_remote_code_in_float32_on_cpu_by_default(backend: ChatRexBackend, tiny_dir: Path) -> None:
    import torch

    assert backend.name == "chatrex"
    assert isinstance(backend, LanguageBackend)
    assert backend.dtype == "float32" and backend.device == "cpu"
    assert type(backend.model).__name__ == "TinyChatRexForCausalLM"  # the checkpoint's class, via auto_map
    assert type(backend.processor).__name__ == "TinyChatRexProcessor"
    assert {p.dtype for p in backend.model.parameters()} == {torch.float32}
    assert {p.device.type for p in backend.model.parameters()} == {"cpu"}
    assert not backend.model.training
    assert backend.describe()["model_path"] == str(tiny_dir)


@needs_transformers
def test_generate_returns_the_decoded_answer_unstripped_after_a_real_greedy_loop(
    backend: ChatRexBackend, tiny_dir: Path
) -> None:
    answer = backend.generate(IMAGE, BOXES, PROMPT, max_new_tokens=64)

    assert answer == DETECT_ANSWER
    call = read_calls(tiny_dir, "generate")[-1]
    tokenizer = backend.processor.tokenizer
    assert call["do_sample"] is False and call["num_beams"] == 1
    assert call["max_new_tokens"] == 64
    assert call["eos_token_id"] == tokenizer.eos_token_id
    assert call["pad_token_id"] == tokenizer.pad_token_id
    # One LLM forward per answer token plus the end-of-sequence step.
    assert call["forward_steps"] == len(script_token_ids(backend, DETECT_ANSWER)) + 1
    assert call["autocast"] is False  # float32: no autocast


@needs_transformers
def test_max_new_tokens_reaches_the_generation_loop(backend: ChatRexBackend, tiny_dir: Path) -> None:
    ids = script_token_ids(backend, DETECT_ANSWER)

    answer = backend.generate(IMAGE, BOXES, PROMPT, max_new_tokens=3)

    assert answer == backend.processor.tokenizer.decode(ids[:3])
    assert answer != DETECT_ANSWER
    assert read_calls(tiny_dir, "generate")[-1]["max_new_tokens"] == 3


@needs_transformers
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_process_receives_exactly_the_given_boxes_in_the_given_order(
    backend: ChatRexBackend, tiny_dir: Path, order: list[int]
) -> None:
    boxes = BOXES[order]

    backend.generate(IMAGE, boxes, PROMPT, max_new_tokens=4)

    call = read_calls(tiny_dir, "process")[-1]
    assert call["bbox"] == boxes.astype(np.float64).tolist()
    assert call["bbox_container"] == "list" and call["value_types"] == ["float"]
    assert call["question"] == PROMPT
    assert call["image_type"] == "Image" and call["image_mode"] == "RGB"
    assert call["image_size"] == [IMAGE.shape[1], IMAGE.shape[0]]  # PIL size is (width, height)


@needs_transformers
def test_accepts_box_lists_and_converts_pil_rgba_to_rgb(backend: ChatRexBackend, tiny_dir: Path) -> None:
    from PIL import Image

    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 128))
    boxes = [[1, 2, 3, 4], [5.5, 6.5, 7.5, 8.5]]

    backend.generate(rgba, boxes, PROMPT, max_new_tokens=2)

    call = read_calls(tiny_dir, "process")[-1]
    assert call["bbox"] == [[1.0, 2.0, 3.0, 4.0], [5.5, 6.5, 7.5, 8.5]]
    assert call["value_types"] == ["float"]
    assert call["image_mode"] == "RGB" and call["image_size"] == [40, 30]


@needs_transformers
def test_one_hundred_boxes_pass_and_the_hundred_and_first_is_refused_before_the_model(
    backend: ChatRexBackend, tiny_dir: Path
) -> None:
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 40, size=(101, 2))
    boxes = np.hstack([corners, corners + rng.uniform(1, 20, size=(101, 2))]).astype(np.float32)

    backend.generate(IMAGE, boxes[:100], PROMPT, max_new_tokens=2)
    assert read_calls(tiny_dir, "process")[-1]["bbox"] == boxes[:100].astype(np.float64).tolist()

    calls_before = len(read_calls(tiny_dir))
    with pytest.raises(ValueError, match="at most 100"):
        backend.generate(IMAGE, boxes, PROMPT)
    assert len(read_calls(tiny_dir)) == calls_before


@needs_transformers
@pytest.mark.parametrize(
    ("image", "boxes", "prompt", "max_new_tokens", "message"),
    [
        (IMAGE, np.zeros((0, 4)), PROMPT, 8, "at least one box"),
        (IMAGE, np.zeros((4,)), PROMPT, 8, r"shape \(N, 4\)"),
        (IMAGE, [[0, 0, np.nan, 4]], PROMPT, 8, "non-finite"),
        (IMAGE, [[0, 0, 5, 5], [9, 0, 3, 4]], PROMPT, 8, r"rows \[1\] have x2 < x1"),
        (IMAGE[:, :, 0], BOXES, PROMPT, 8, r"\(H, W, 3\)"),
        (IMAGE.astype(np.float32), BOXES, PROMPT, 8, "uint8"),
        (IMAGE, BOXES, "  ", 8, "prompt"),
        (IMAGE, BOXES, PROMPT, 0, "max_new_tokens"),
    ],
)
def test_bad_input_is_a_value_error_that_never_reaches_the_model(
    backend: ChatRexBackend, tiny_dir: Path, image, boxes, prompt, max_new_tokens, message
) -> None:
    calls_before = len(read_calls(tiny_dir))
    with pytest.raises(ValueError, match=message):
        backend.generate(image, boxes, prompt, max_new_tokens=max_new_tokens)
    assert len(read_calls(tiny_dir)) == calls_before


@needs_transformers
def test_answer_resolves_to_the_boxes_the_model_was_shown(backend: ChatRexBackend, tiny_dir: Path) -> None:
    proposals = Proposals(boxes=BOXES.copy(), scores=np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32))
    request = QueryRequest.create("detect", ["person"])

    result = answer_query(backend, IMAGE, proposals, request)

    assert result.raw_output == DETECT_ANSWER
    assert read_calls(tiny_dir, "process")[-1]["question"] == request.prompt
    assert [d.proposal_index for d in result.detections] == [2, 0]
    assert [d.label for d in result.detections] == ["person", "person"]
    assert [d.box for d in result.detections] == [tuple(BOXES[2].tolist()), tuple(BOXES[0].tolist())]
    assert [d.score for d in result.detections] == pytest.approx([0.7, 0.9])


@needs_transformers
def test_answer_about_the_last_box_follows_the_box_count(tmp_path: Path) -> None:
    # The script names the last box it was shown: resolution must land on that same row.
    model_dir = make_tiny_chatrex(
        tmp_path / unique_name("tiny_chatrex_last_box"),
        lambda question, count: f"<ground>cup</ground><objects><obj{count - 1}></objects>",
    )
    backend = ChatRexBackend(str(model_dir), device="cpu", trust_remote_code=True)
    for count in (1, 3):
        proposals = Proposals(boxes=BOXES[:count].copy(), scores=np.linspace(0.9, 0.5, count, dtype=np.float32))
        result = answer_query(backend, IMAGE, proposals, QueryRequest.create("detect", ["cup"]))
        assert [d.proposal_index for d in result.detections] == [count - 1]
        assert result.detections[0].box == tuple(BOXES[count - 1].tolist())


@needs_transformers
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_in_that_dtype_and_runs_under_autocast(tiny_dir: Path, dtype: str) -> None:
    import torch

    half = ChatRexBackend(str(tiny_dir), device="cpu", dtype=dtype, trust_remote_code=True)

    assert half.dtype == dtype
    assert {p.dtype for p in half.model.parameters()} == {getattr(torch, dtype)}
    assert half.generate(IMAGE, BOXES, PROMPT) == DETECT_ANSWER
    call = read_calls(tiny_dir, "generate")[-1]
    assert call["param_dtype"] == f"torch.{dtype}" and call["autocast"] is True


@needs_transformers
def test_registry_builds_the_chatrex_backend(tiny_dir: Path) -> None:
    from chatrex_ros.models.registry import make_language_backend

    built = make_language_backend("chatrex", model_path=str(tiny_dir), device="cpu", trust_remote_code=True)

    assert isinstance(built, ChatRexBackend)
    assert built.generate(IMAGE, BOXES, PROMPT) == DETECT_ANSWER


@needs_transformers
@pytest.mark.skipif(not HAS_TRANSFORMERS or not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_defaults_to_bfloat16_with_autocast(tiny_dir: Path) -> None:
    import torch

    gpu = ChatRexBackend(str(tiny_dir), device="cuda", trust_remote_code=True)

    assert gpu.dtype == "bfloat16"
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    assert {p.dtype for p in gpu.model.parameters()} == {torch.bfloat16}
    assert gpu.generate(IMAGE, BOXES, PROMPT) == DETECT_ANSWER
    call = read_calls(tiny_dir, "generate")[-1]
    assert call["device"].startswith("cuda") and call["autocast"] is True


# --------------------------------------------------------------------------- start-up checks


@needs_transformers
@pytest.mark.parametrize("trust", [False, "true", 1])
def test_remote_code_is_refused_unless_explicitly_trusted_and_never_runs(tmp_path: Path, trust: object) -> None:
    model_dir = make_tiny_chatrex(tmp_path / unique_name("tiny_chatrex_refused"))

    with pytest.raises(RemoteCodeRefused) as refused:
        ChatRexBackend(str(model_dir), device="cpu", trust_remote_code=trust)  # type: ignore[arg-type]

    message = str(refused.value)
    assert "trust_remote_code:=true" in message and "own Python code" in message
    assert isinstance(refused.value, RuntimeError)
    assert read_calls(model_dir) == []  # not even imported


@needs_transformers
def test_cuda_requested_without_cuda_is_a_clear_runtime_error(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # test double: a machine without a GPU
    imports_before = len(read_calls(tiny_dir, "import"))

    with pytest.raises(RuntimeError, match="CUDA is not available") as error:
        ChatRexBackend(str(tiny_dir), device="cuda", trust_remote_code=True)

    assert "device:=cpu" in str(error.value)
    assert len(read_calls(tiny_dir, "import")) == imports_before


def test_missing_directory_says_where_to_get_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # A hub id is only ever a local path here: no download is attempted.
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        ChatRexBackend("IDEA-Research/ChatRex-7B", device="cpu", trust_remote_code=True)
    assert "hf download IDEA-Research/ChatRex-7B" in str(error.value)

    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        check_model_dir(tmp_path / "weights.bin")


def test_directory_without_config_or_auto_map_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model_dir(tmp_path)

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_model_dir(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="auto_map"):
        check_model_dir(tmp_path)


@needs_transformers
def test_incomplete_checkpoint_names_every_missing_file(tiny_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_dir, tmp_path / unique_name("tiny_chatrex_broken")))
    assert check_model_dir(broken) == broken.resolve()
    for name in ("model-00002-of-00002.safetensors", "tokenizer.json", "processing_tiny_chatrex.py"):
        (broken / name).unlink()

    with pytest.raises(FileNotFoundError) as error:
        ChatRexBackend(str(broken), device="cpu", trust_remote_code=True)

    for name in ("model-00002-of-00002.safetensors", "tokenizer.json", "processing_tiny_chatrex.py"):
        assert name in str(error.value)
    assert "model-00001-of-00002.safetensors" not in str(error.value)

    (broken / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        check_model_dir(broken)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "gpu"}, "device must be"),
        ({"device": "cuda:x"}, "device must be"),
        ({"dtype": "fp16"}, "dtype must be one of"),
        ({"max_boxes": 0}, "max_boxes"),
        ({"max_boxes": 101}, "max_boxes"),
    ],
)
def test_bad_arguments_are_value_errors_before_anything_is_read(tmp_path: Path, kwargs: dict, message: str) -> None:
    # The directory does not exist either: argument errors come first.
    with pytest.raises(ValueError, match=message):
        ChatRexBackend(str(tmp_path / "absent"), **{"device": "cpu", **kwargs})


@pytest.mark.parametrize("version", ["4.44.2", "4.45.0", "4.45.2"])
def test_supported_transformers_versions_pass(version: str) -> None:
    assert check_transformers_version(version) == version


@pytest.mark.parametrize("version", ["4.43.4", "4.44.1", "4.46.0", "4.57.6", "5.0.0", "not-a-version"])
def test_transformers_outside_the_range_fail_with_the_install_command(version: str) -> None:
    with pytest.raises(ImportError) as error:
        check_transformers_version(version)
    assert "pip install" in str(error.value)
    if version != "not-a-version":
        assert SUPPORTED_TRANSFORMERS in str(error.value)


@needs_transformers
def test_installed_transformers_is_in_range_and_an_out_of_range_one_stops_construction(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    check_transformers_version(transformers.__version__)
    monkeypatch.setattr(transformers, "__version__", "4.46.0")  # test double: a newer install
    imports_before = len(read_calls(tiny_dir, "import"))

    with pytest.raises(ImportError, match="transformers 4.46.0 is installed"):
        ChatRexBackend(str(tiny_dir), device="cpu", trust_remote_code=True)
    assert len(read_calls(tiny_dir, "import")) == imports_before


@needs_transformers
def test_missing_transformers_says_what_to_pip_install(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # test double: transformers not installed

    with pytest.raises(ImportError, match=r"pip install 'chatrex_ros\[chatrex\]'"):
        ChatRexBackend(str(tiny_dir), device="cpu", trust_remote_code=True)


def test_pyproject_chatrex_extra_pins_the_same_transformers_range() -> None:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    pins = [Requirement(r) for r in extras["chatrex"] if Requirement(r).name == "transformers"]

    assert len(pins) == 1, "the [chatrex] extra must name transformers exactly once"
    assert pins[0].specifier == SpecifierSet(SUPPORTED_TRANSFORMERS)
