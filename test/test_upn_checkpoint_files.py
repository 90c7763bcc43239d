"""Training-style UPN .pth files: what weights-only loading accepts, what it refuses in one line, convert-upn.

Every file is built here from the tiny UPN's weights, the way a training loop saves them: the state dict under
"model" beside the run's arguments, numpy values, an optimizer state and counters.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from chatrex_ros.cli import main
from chatrex_ros.commands.exit_codes import ExitCode
from chatrex_ros.models.registry import make_proposal_backend
from chatrex_ros.models.upn.checkpoint import load_upn_weights, read_state_dict
from chatrex_ros.models.upn.model import UPN, build_upn

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "test" / "data" / "upn" / "tiny_state_dict.safetensors"
UNPICKLED: list[int] = []
"""Steps of every TrainingState whose state was set by an unpickler: the proof that its code ran."""


class TrainingState:
    """An object of the training code's own class: weights-only loading must refuse it without running it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __setstate__(self, state: dict[str, int]) -> None:
        UNPICKLED.append(state["step"])
        self.__dict__.update(state)


@pytest.fixture(scope="module")
def tiny() -> UPN:
    return load_upn_weights(build_upn("tiny"), WEIGHTS).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def refused(tmp_path: Path, tiny: UPN) -> Path:
    """A training checkpoint that also holds a TrainingState."""
    UNPICKLED.clear()
    return training_checkpoint(tmp_path / "trained.pth", tiny, trainer=TrainingState(7))


def training_checkpoint(path: Path, model: UPN, **extra: object) -> Path:
    """``{"model": state_dict, ...}`` as a training loop writes it (aliased box-head tensors included)."""
    checkpoint = {
        "model": model.state_dict(),
        "args": argparse.Namespace(lr=1e-4, backbone="swin_t", sizes=[480, 800], weight=np.float32(2.0)),
        "epoch": 3,
        "np_scalar": np.float64(0.5),
        "np_array": np.arange(4, dtype=np.int32),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def outputs(model: UPN, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(pixels, "fine")


def assert_same_model(model: UPN, reference: UPN, pixels: torch.Tensor) -> None:
    expected = reference.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    for got, want in zip(outputs(model, pixels), outputs(reference, pixels), strict=True):
        assert torch.equal(got, want)


def assert_one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text and "Weights only load failed" not in text, text
    return lines[0]


# --- weights-only loading ------------------------------------------------------------------------------


def test_training_checkpoint_loads_like_its_state_dict(tmp_path, tiny, pixels, caplog):
    path = training_checkpoint(tmp_path / "trained.pth", tiny)
    with pytest.raises(Exception, match="Weights only load failed"):  # what plain weights-only loading says
        torch.load(path, weights_only=True)
    allowed_before = set(torch.serialization.get_safe_globals())
    with caplog.at_level("INFO", logger="chatrex_ros.models.upn.checkpoint"):
        fresh = load_upn_weights(build_upn("tiny"), path).eval()
    assert_same_model(fresh, tiny, pixels)
    assert "args, epoch, np_array, np_scalar, optimizer" in caplog.text
    # The allow-list was scoped to the load: the process accepts no more than before.
    assert set(torch.serialization.get_safe_globals()) == allowed_before
    assert argparse.Namespace not in allowed_before


def test_numpy_1_names_of_the_numpy_helpers_are_allowed(tmp_path, tiny, pixels):
    """Files written under numpy 1 name ``numpy.core.multiarray``; numpy 2 calls it ``numpy._core``."""
    path = tmp_path / "numpy1.pth"
    # The pre-1.6 format keeps the pickle uncompressed and its GLOBAL names newline-terminated, so the module
    # name can be rewritten in place to what numpy 1 wrote.
    torch.save(
        {"model": tiny.state_dict(), "loss": np.float64(0.25), "ids": np.arange(3)},
        path,
        _use_new_zipfile_serialization=False,
    )
    data = path.read_bytes()
    assert data.count(b"numpy._core.multiarray\n") >= 2
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"numpy._core" not in path.read_bytes()
    assert_same_model(load_upn_weights(build_upn("tiny"), path).eval(), tiny, pixels)


def test_an_object_of_another_class_is_refused_in_one_line(refused):
    with pytest.raises(ValueError) as raised:
        read_state_dict(refused)
    message = assert_one_line(str(raised.value))
    assert str(refused) in message and "TrainingState" in message
    assert f"chatrex-ros convert-upn --checkpoint {refused} --out {refused.with_suffix('.safetensors')}" in message
    assert "trust" in message
    assert raised.value.__suppress_context__  # no chained torch error behind it
    assert UNPICKLED == []  # the class's code never ran
    # The proposal node builds its backend the same way: the same one line reaches its start-up failure.
    with pytest.raises(ValueError, match="TrainingState") as from_backend:
        make_proposal_backend("torch", checkpoint=str(refused), variant="tiny")
    assert_one_line(str(from_backend.value))


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.pth", b""), ("text.pth", b"not a checkpoint"), ("cut.pth", b"PK\x03\x04 cut"), ("bad.safetensors", b"x")],
)
def test_unreadable_files_fail_in_one_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"is not a readable (PyTorch checkpoint|safetensors file): \S") as raised:
        read_state_dict(path)
    assert "convert-upn" not in assert_one_line(str(raised.value))  # converting would not help


# --- convert-upn ---------------------------------------------------------------------------------------


def test_convert_upn_writes_safetensors_that_load_like_the_model(refused, tiny, pixels, capsys):
    assert main(["convert-upn", "--checkpoint", str(refused)]) == ExitCode.OK
    captured = capsys.readouterr()
    warning = assert_one_line(captured.err)
    assert "weights_only=False" in warning and "trust" in warning
    assert UNPICKLED == [7]  # the conversion did run the pickle, as the warning says
    out = refused.with_suffix(".safetensors")
    from safetensors.torch import load_file

    written = load_file(str(out))
    assert written.keys() == tiny.state_dict().keys()
    report = assert_one_line(captured.out)
    assert f"wrote {out}: {len(written)} tensors" in report
    for key in ("args", "epoch", "np_scalar", "optimizer", "trainer"):
        assert key in report.split("ignored non-tensor entries:")[1]
    assert_same_model(load_upn_weights(build_upn("tiny"), out).eval(), tiny, pixels)


def test_convert_upn_keeps_the_tensors_of_a_plain_state_dict(tmp_path, capsys):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"weight": base, "alias": base, "row": base[1], "column": base[:, 2], "note": "made by hand"}
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    out = tmp_path / "custom name.safetensors"
    assert main(["convert-upn", "--checkpoint", str(path), "--out", str(out)]) == ExitCode.OK
    assert "ignored non-tensor entries: note (str)" in capsys.readouterr().out
    from safetensors.torch import load_file

    written = load_file(str(out))
    assert sorted(written) == ["alias", "column", "row", "weight"]
    for key, value in written.items():
        assert torch.equal(value, state[key]), key


def test_convert_upn_does_not_overwrite_without_force(refused, tiny, capsys):
    out = refused.with_suffix(".safetensors")
    out.write_text("keep me")
    assert main(["convert-upn", "--checkpoint", str(refused), "--out", str(out)]) == ExitCode.BAD_INPUT
    captured = capsys.readouterr()
    assert "--force" in assert_one_line(captured.err) and captured.out == ""
    assert out.read_text() == "keep me"
    assert UNPICKLED == []  # refused before reading the pickle
    assert main(["convert-upn", "--checkpoint", str(refused), "--out", str(out), "--force"]) == ExitCode.OK
    assert read_state_dict(out).keys() == tiny.state_dict().keys()


def test_convert_upn_reports_bad_input_in_one_line(tmp_path, capsys):
    missing = tmp_path / "absent.pth"
    assert main(["convert-upn", "--checkpoint", str(missing)]) == ExitCode.BAD_INPUT
    line = assert_one_line(capsys.readouterr().err)
    assert "not found" in line and str(missing) in line
    assert not missing.with_suffix(".safetensors").exists()

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    assert main(["convert-upn", "--checkpoint", str(garbage)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "trust" in err[0] and f"cannot read {garbage}" in err[1], err
    assert not garbage.with_suffix(".safetensors").exists()


# --- export-upn ----------------------------------------------------------------------------------------


def test_export_upn_with_a_refused_file_fails_in_one_line_without_a_traceback(refused, tmp_path):
    out = tmp_path / "upn.onnx"
    command = [sys.executable, "-m", "chatrex_ros", "export-upn", "--checkpoint", str(refused)]
    command += ["--variant", "tiny", "--size", "96x128", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == ExitCode.FAILED, result.stderr
    line = assert_one_line(result.stderr)
    assert line.startswith("export-upn: ") and "TrainingState" in line and "chatrex-ros convert-upn" in line
    assert not out.exists()
