"""Which backends an evaluation runs, as a small picklable value instead of live model objects.

Evaluating many bags in worker processes (or Ray tasks) must not pickle a loaded model: each worker builds
its own from this description, once per process. The single-bag ``chatrex-ros eval`` and ``demo`` build
theirs from it too, so every path resolves the config file and the flags in exactly one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command line imports this module to build its parser: models load when built
    from chatrex_ros.models.base import LanguageBackend, ProposalPipeline


def parse_params(items: Iterable[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings -> keywords; values become bool/int/float when they look like one."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY a Python identifier")
        params[key.strip()] = _literal(value)
    return params


def _literal(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class ModelSpec:
    """The model flags of ``eval``/``demo``: the config file plus what the command line overrides.

    Frozen and hashable, so a worker process can cache the backends it built under it.
    """

    config: str | None = None
    proposal_backend: str | None = None
    proposal_params: tuple[str, ...] = ()
    language_backend: str | None = None
    model_path: str | None = None
    language_params: tuple[str, ...] = ()
    min_score: float | None = None
    nms_iou: float | None = None
    max_proposals: int | None = None

    @classmethod
    def from_args(cls, args: Any) -> ModelSpec:
        """From the parsed ``eval``/``demo`` arguments (an argparse namespace)."""
        return cls(
            str(args.config) if args.config else None,
            args.proposal_backend,
            tuple(args.proposal_param),
            args.language_backend,
            args.model_path,
            tuple(args.language_param),
            args.min_score,
            args.nms_iou,
            args.max_proposals,
        )

    def build(self) -> tuple[ProposalPipeline, LanguageBackend | None]:
        """Backends from the config file's node sections (as the nodes build them), flags taking precedence."""
        from chatrex_ros.models.base import ProposalPipeline
        from chatrex_ros.models.registry import make_language_backend, make_proposal_backend
        from chatrex_ros.models.settings import language_backend_kwargs, proposal_backend_kwargs, selection_policy
        from chatrex_ros.node_parameters import LanguageNodeParams, ProposalNodeParams, resolved
        from chatrex_ros.parameters import node_section
        from chatrex_ros.paths import config_file

        config = Path(self.config) if self.config else config_file("chatrex.yaml")
        proposal_values = node_section(config, "proposal_node")
        language_values = node_section(config, "language_node")
        for key, value in (
            ("backend", self.proposal_backend),
            ("min_score", self.min_score),
            ("nms_iou", self.nms_iou),
            ("max_proposals", self.max_proposals),
        ):
            if value is not None:
                proposal_values[key] = value
        if self.language_backend is not None:
            language_values["language_backend"] = self.language_backend
        if self.model_path:
            language_values["model_path"] = self.model_path
        proposal_params = resolved(ProposalNodeParams, proposal_values)
        language_params = resolved(LanguageNodeParams, language_values)
        proposal_kwargs = {
            **proposal_backend_kwargs(proposal_params),
            **parse_params(self.proposal_params, "--proposal-param"),
        }
        proposal = make_proposal_backend(proposal_params.backend, **proposal_kwargs)
        extra_language = parse_params(self.language_params, "--language-param")
        if language_params.language_backend == "none" and (extra_language or self.model_path):
            raise ValueError(
                "--model-path/--language-param given but the language backend is 'none'; add --language-backend chatrex"
            )
        language_kwargs = {**language_backend_kwargs(language_params), **extra_language}
        language = make_language_backend(language_params.language_backend, **language_kwargs)
        return ProposalPipeline(proposal, selection_policy(proposal_params)), language
