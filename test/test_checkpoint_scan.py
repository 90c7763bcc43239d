"""Reading a remote-code checkpoint for what it needs (hub ids, imports) before any of its code runs.

The checkpoints here are written by the tests: hand-made remote code for the scanner, and the tiny
ChatRex-shaped checkpoint (test/fixtures/tiny_chatrex.py) with lines added for the backend's start-up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from chatrex_ros.models.checkpoint_scan import hub_cache_dir, is_cached, pip_name, scan_checkpoint
from chatrex_ros.models.settings import backend_options

HAS_TRANSFORMERS = all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs torch + transformers")
if HAS_TRANSFORMERS:
    os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="chatrex_test_hf_modules_"))
    from fixtures.tiny_chatrex import make_tiny_chatrex, read_calls

TOWER = "openai/clip-vit-large-patch14-336"
MODELING = f'''
import os
import torch
from transformers import CLIPVisionModel
from . import configuration_llava_like
import configuration_llava_like as own
try:
    import optional_accelerator_xyz
except ImportError:
    optional_accelerator_xyz = None
import missing_vision_pkg_xyz.layers

DEFAULT_PROCESSOR = "acme/image-processor"
NOT_A_MODEL = "text/plain"


def build_tower(vision_tower="{TOWER}", local_dir="vision_tower"):
    return CLIPVisionModel.from_pretrained(vision_tower)


def build_projector():
    return CLIPVisionModel.from_pretrained(pretrained_model_name_or_path="acme/projector-v2")


def local():
    return CLIPVisionModel.from_pretrained("vision_tower")
'''


def write_checkpoint(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "modeling_llava_like.py").write_text(MODELING)
    (directory / "configuration_llava_like.py").write_text("MODEL_TYPE = 'llava_like'\n")
    (directory / "vision_tower").mkdir()  # a sub-model shipped inside the checkpoint: local, not a hub id
    config = {"model_type": "llava_like", "mm_vision_tower": TOWER, "text_config": {"_name_or_path": "acme/llm-7b"}}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "processor_config.json").write_text(json.dumps({"image_processor_name": "acme/image-processor"}))
    return directory


def cache_snapshot(cache: Path, repo: str) -> None:
    """The hub cache's layout for a downloaded repository: models--owner--name/snapshots/<revision>/files."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def test_hub_ids_are_found_in_loader_calls_defaults_assignments_and_configs(tmp_path) -> None:
    scan = scan_checkpoint(write_checkpoint(tmp_path / "ckpt"))
    assert set(scan.hub_ids) == {TOWER, "acme/image-processor", "acme/projector-v2", "acme/llm-7b"}
    assert scan.hub_ids[TOWER] == ["modeling_llava_like.py:17", "config.json"]
    assert "config.json" in scan.hub_ids["acme/llm-7b"]  # nested config values too
    assert "processor_config.json" in scan.hub_ids["acme/image-processor"]


def test_imports_leave_out_the_standard_library_the_checkpoints_own_modules_and_relative_ones(tmp_path) -> None:
    scan = scan_checkpoint(write_checkpoint(tmp_path / "ckpt"))
    assert set(scan.imports) == {"torch", "transformers", "missing_vision_pkg_xyz"}
    assert scan.optional_imports == {"optional_accelerator_xyz": ["modeling_llava_like.py:8"]}
    assert scan.missing_imports() == ["missing_vision_pkg_xyz"]  # an optional one is not a problem
    assert "pip install missing-vision-pkg-xyz" in scan.import_problem()
    assert pip_name("open_clip") == "open_clip_torch" and pip_name("PIL") == "pillow"


def test_the_cache_check_follows_hf_hub_cache_then_hf_home(tmp_path) -> None:
    assert hub_cache_dir({"HF_HUB_CACHE": str(tmp_path / "a"), "HF_HOME": str(tmp_path / "b")}) == tmp_path / "a"
    assert hub_cache_dir({"HF_HOME": str(tmp_path / "b")}) == tmp_path / "b" / "hub"
    assert hub_cache_dir({}) == Path("~/.cache/huggingface/hub").expanduser()
    cache = tmp_path / "hub"
    assert not is_cached(TOWER, cache)
    (cache / f"models--{TOWER.replace('/', '--')}" / "snapshots" / "empty").mkdir(parents=True)
    assert not is_cached(TOWER, cache)  # an interrupted download leaves an empty snapshot
    cache_snapshot(cache, "acme/llm-7b")
    assert is_cached("acme/llm-7b", cache)


def test_problems_name_each_missing_repository_with_the_download_command(tmp_path) -> None:
    scan = scan_checkpoint(write_checkpoint(tmp_path / "ckpt"))
    cache = tmp_path / "hub"
    for repo in ("acme/image-processor", "acme/projector-v2", "acme/llm-7b"):
        cache_snapshot(cache, repo)
    assert scan.missing_hub_ids(cache) == [TOWER]
    (line,) = scan.hub_problems(cache)
    assert f"`hf download {TOWER}`" in line and "modeling_llava_like.py:17" in line and str(cache) in line
    assert "allow_hub_download:=true" in line
    assert len(scan.problems(cache)) == 2  # the hub id and the missing import


def test_a_file_that_does_not_parse_is_reported_not_run(tmp_path) -> None:
    directory = write_checkpoint(tmp_path / "ckpt")
    (directory / "broken.py").write_text("def oops(:\n")
    scan = scan_checkpoint(directory)
    assert scan.unreadable == ["broken.py"] and "cannot parse broken.py" in scan.problems(tmp_path)[-1]


def test_backend_options_cannot_turn_on_hub_downloads() -> None:
    with pytest.raises(ValueError, match="may not set allow_hub_download"):
        backend_options('{"allow_hub_download": true}')


# --------------------------------------------------------------------------- the backend's start-up


def tiny_checkpoint(tmp_path: Path, extra_code: str) -> Path:
    """The tiny ChatRex-shaped checkpoint with ``extra_code`` appended to its modeling file."""
    directory = make_tiny_chatrex(tmp_path / f"tiny_chatrex_scan_{uuid.uuid4().hex[:8]}")
    modeling = directory / "modeling_tiny_chatrex.py"
    modeling.write_text(modeling.read_text() + "\n" + extra_code + "\n")
    return directory


@needs_transformers
def test_an_uncached_hub_id_stops_start_up_offline_before_the_code_runs(tmp_path, monkeypatch) -> None:
    from chatrex_ros.models.chatrex import ChatRexBackend, HubFilesMissing

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    directory = tiny_checkpoint(tmp_path, f'VISION_TOWER = "{TOWER}"')
    with pytest.raises(HubFilesMissing, match=rf"loads {TOWER} from the hub .*`hf download {TOWER}`"):
        ChatRexBackend(str(directory), device="cpu", trust_remote_code=True)
    assert read_calls(directory) == []  # nothing of the checkpoint's code ran

    cache_snapshot(tmp_path / "hub", TOWER)  # what `hf download` leaves behind: now it loads, offline
    loaded = ChatRexBackend(str(directory), device="cpu", trust_remote_code=True)
    assert loaded.downloaded == () and os.environ["HF_HUB_OFFLINE"] == "1"


@needs_transformers
def test_allow_hub_download_lets_the_code_fetch_what_is_missing_and_says_so(tmp_path, monkeypatch) -> None:
    from chatrex_ros.models.chatrex import ChatRexBackend

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    directory = tiny_checkpoint(tmp_path, f'VISION_TOWER = "{TOWER}"')
    loaded = ChatRexBackend(str(directory), device="cpu", trust_remote_code=True, allow_hub_download=True)
    assert loaded.downloaded == (TOWER,) and loaded.describe()["downloaded_from_hub"] == TOWER
    with pytest.raises(ValueError, match="allow_hub_download must be true or false"):
        ChatRexBackend(str(directory), device="cpu", trust_remote_code=True, allow_hub_download="yes")  # type: ignore[arg-type]


@needs_transformers
def test_an_import_the_code_needs_and_lacks_is_named_with_the_pip_command(tmp_path) -> None:
    from chatrex_ros.models.chatrex import ChatRexBackend

    directory = tiny_checkpoint(tmp_path, "import open_clip")
    if importlib.util.find_spec("open_clip") is not None:
        pytest.skip("open_clip is installed here")
    with pytest.raises(ImportError, match=r"imports open_clip, not installed .*pip install open_clip_torch"):
        ChatRexBackend(str(directory), device="cpu", trust_remote_code=True)
    assert read_calls(directory) == []


@needs_transformers
def test_the_authors_dtype_keeps_float32_weights_under_bfloat16_autocast(tmp_path) -> None:
    import torch

    from chatrex_ros.models.chatrex import ChatRexBackend

    directory = make_tiny_chatrex(tmp_path / f"tiny_chatrex_authors_{uuid.uuid4().hex[:8]}")
    authors = ChatRexBackend(str(directory), device="cpu", dtype="autocast-bfloat16", trust_remote_code=True)
    assert {p.dtype for p in authors.model.parameters()} == {torch.float32}
    authors.generate(np.full((32, 32, 3), 100, np.uint8), np.array([[1.0, 1.0, 9.0, 9.0]]), "Detect cup.")
    call = read_calls(directory, "generate")[-1]
    assert call["param_dtype"] == "torch.float32" and call["autocast"] is True
