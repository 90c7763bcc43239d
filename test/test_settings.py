"""One parameter table per node drives the nodes and the offline tools: config in, the same backends out."""

from __future__ import annotations

import json

import pytest
import yaml

from chatrex_ros.cli import main
from chatrex_ros.models.selective_search import SelectiveSearchBackend
from chatrex_ros.models.settings import language_backend, proposal_backend_kwargs, proposal_pipeline
from chatrex_ros.node_parameters import (
    LANGUAGE_NODE,
    PROPOSAL_NODE,
    LanguageNodeParams,
    ProposalNodeParams,
    resolved,
)
from chatrex_ros.parameters import ParamSpec, node_section, resolve


def test_resolve_fills_defaults_flattens_and_rejects_bad_values() -> None:
    values = resolve(PROPOSAL_NODE, {"min_score": 1, "image_qos": {"depth": 3}})
    assert values["min_score"] == 1.0 and isinstance(values["min_score"], float)
    assert values["image_qos.depth"] == 3 and values["backend"] == "selective_search"
    with pytest.raises(ValueError, match="max_proposals must be <= 100"):
        resolve(PROPOSAL_NODE, {"max_proposals": 101})
    with pytest.raises(ValueError, match="unknown parameter 'bakcend'"):
        resolve(PROPOSAL_NODE, {"bakcend": "torch"})
    with pytest.raises(ValueError, match="must be bool"):
        resolve(LANGUAGE_NODE, {"trust_remote_code": "yes"})


def test_param_spec_accepts_plugins_only_where_allowed() -> None:
    spec = ParamSpec("backend", "a", "", ("a", "b"), allow_plugin=True)
    assert spec.validate("python:pkg.mod:Cls") is None
    assert "one of" in ParamSpec("x", "a", "", ("a",)).validate("python:pkg.mod:Cls")


def test_backend_keywords_follow_the_parameters() -> None:
    torch_values = resolved(
        ProposalNodeParams,
        {
            "backend": "torch",
            "checkpoint": "/m/upn.pth",
            "precision": "bf16",
            "device": "cuda",
            "granularity": "coarse",
        },
    )
    assert proposal_backend_kwargs(torch_values) == {
        "checkpoint": "/m/upn.pth",
        "variant": "large",
        "granularity": "coarse",
        "device": "cuda",
        "dtype": "bfloat16",
    }
    ort = proposal_backend_kwargs(resolved(ProposalNodeParams, {"backend": "onnxruntime", "onnx": "u.onnx"}))
    assert ort == {"onnx_path": "u.onnx", "providers": ["CPUExecutionProvider"]}
    pipeline = proposal_pipeline(resolved(ProposalNodeParams, {"selective_search_long_side": 128, "max_proposals": 7}))
    assert isinstance(pipeline.backend, SelectiveSearchBackend) and pipeline.backend.long_side == 128
    assert pipeline.policy.max_count == 7
    assert language_backend(resolved(LanguageNodeParams, {})) is None
    with pytest.raises(ValueError, match="backend_options"):
        language_backend(resolved(LanguageNodeParams, {"language_backend": "python:x:y", "backend_options": "[1]"}))


def test_demo_uses_the_backends_of_the_config_file(tmp_path) -> None:
    config = tmp_path / "robot.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "proposal_node": {
                    "ros__parameters": {"selective_search_long_side": 160, "max_proposals": 5, "min_score": 0.0}
                },
                "language_node": {"ros__parameters": {"language_backend": "none"}},
            }
        )
    )
    assert node_section(config, "proposal_node")["max_proposals"] == 5
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-progress",
                "--quiet",
                "--no-plots",
                "--max-frames",
                "2",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inputs"]["selection"]["max_count"] == 5
    assert (
        main(
            [
                "demo",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-progress",
                "--quiet",
                "--no-plots",
                "--max-frames",
                "1",
                "--max-proposals",
                "3",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["inputs"]["selection"]["max_count"] == 3


@pytest.mark.parametrize("backend", ["chatrex", "python:doubles.scripted_model:ScriptedModel"])
def test_backend_options_cannot_turn_on_remote_code(backend) -> None:
    """The trust decision comes only from trust_remote_code itself, never from the free-form options."""
    params = resolved(
        LanguageNodeParams,
        {
            "language_backend": backend,
            "model_path": "/m/chatrex",
            "trust_remote_code": False,
            "backend_options": json.dumps({"trust_remote_code": True}),
        },
    )
    with pytest.raises(ValueError, match="may not set trust_remote_code"):
        language_backend(params)
