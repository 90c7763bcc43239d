"""UPN hyper-parameters: the two presets and a reader for the reference configuration JSON schema.

Pure Python (no torch) so backends that never build the network (ONNX Runtime, TensorRT) can still
read the pre-processing sizes of a variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class UPNConfig:
    """Everything that shapes the network and its input resize rule.

    ``d_model`` is fixed at 256 by the architecture: the decoder's box sine embedding has 128 features per
    coordinate and ``ref_point_head`` expects ``2 * d_model`` of them.
    """

    name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    num_queries: int
    encoder_layers: int
    decoder_layers: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    mlp_ratio: float = 4.0
    patch_size: int = 4
    d_model: int = 256
    attention_heads: int = 8
    feature_levels: int = 5
    sampling_points: int = 4
    pos_temperature: float = 20.0
    resize_short: int = 800
    resize_max: int = 1333
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.d_model != 256:
            raise ValueError(
                f"d_model must be 256 (the decoder's query sine embedding is fixed at 4 x 128), got {self.d_model}"
            )
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages: depths {self.depths}, num_heads {self.num_heads}")
        if self.feature_levels != 5:
            raise ValueError(
                f"UPN uses 4 Swin levels plus one extra level (5), got feature_levels={self.feature_levels}"
            )
        for stage, (heads, dim) in enumerate(zip(self.num_heads, self.stage_dims, strict=True)):
            if dim % heads:
                raise ValueError(f"Swin stage {stage}: {dim} channels do not split into {heads} heads")
        if self.d_model % self.attention_heads:
            raise ValueError(f"d_model {self.d_model} does not split into {self.attention_heads} heads")
        if min(self.num_queries, self.encoder_layers, self.decoder_layers, self.window_size) < 1:
            raise ValueError("num_queries, encoder_layers, decoder_layers and window_size must be >= 1")
        if not 0 < self.resize_short <= self.resize_max:
            raise ValueError(f"resize sizes must satisfy 0 < short <= max, got {self.resize_short}/{self.resize_max}")

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channels of the four Swin stages (doubling after every patch merge)."""
        return tuple(self.embed_dim * 2**i for i in range(4))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, without ``extra``."""
        data = asdict(self)
        data.pop("extra")
        return data


PRESETS: dict[str, UPNConfig] = {
    # Swin-L 384 backbone, 6+6 deformable layers, 900 queries: the official upn_large.pth.
    "large": UPNConfig(
        name="large",
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window_size=12,
        num_queries=900,
        encoder_layers=6,
        decoder_layers=6,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
    ),
    # The golden-test variant of the reference data (same classes, small sizes, 400/560 resize).
    "tiny": UPNConfig(
        name="tiny",
        embed_dim=8,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=7,
        num_queries=100,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        resize_short=400,
        resize_max=560,
    ),
}


def _require(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"UPN config dict lacks '{path}' (expected the schema of upn_large_config.json)")
        node = node[part]
    return node


def config_from_reference_dict(data: dict[str, Any]) -> UPNConfig:
    """Read the architecture and resize sizes from a dict in the reference config JSON schema."""
    arch = _require(data, "architecture")
    backbone = _require(arch, "backbone")
    msda = arch.get("msdeformattn", {})
    resize = data.get("preprocessing", {}).get("resize", {})
    if float(arch.get("position_encoding", {}).get("temperatureH", 20)) != float(
        arch.get("position_encoding", {}).get("temperatureW", 20)
    ):
        raise ValueError("different H and W positional temperatures are not supported")
    return UPNConfig(
        name=str(data.get("name", "custom")),
        embed_dim=int(_require(backbone, "embed_dim")),
        depths=tuple(int(d) for d in _require(backbone, "depths")),
        num_heads=tuple(int(h) for h in _require(backbone, "num_heads")),
        window_size=int(_require(backbone, "window_size")),
        mlp_ratio=float(backbone.get("mlp_ratio", 4.0)),
        patch_size=int(backbone.get("patch_size", 4)),
        num_queries=int(_require(arch, "top_level.num_queries")),
        d_model=int(arch["top_level"].get("d_model", 256)),
        feature_levels=int(arch["top_level"].get("num_feature_levels", 5)),
        encoder_layers=int(_require(arch, "encoder.num_layers")),
        decoder_layers=int(_require(arch, "decoder.num_layers")),
        encoder_ffn_dim=int(_require(arch, "encoder.d_ffn")),
        decoder_ffn_dim=int(_require(arch, "decoder.d_ffn")),
        attention_heads=int(msda.get("n_heads", 8)),
        sampling_points=int(msda.get("n_points", 4)),
        pos_temperature=float(arch.get("position_encoding", {}).get("temperatureH", 20)),
        resize_short=int(resize.get("size", 800)),
        resize_max=int(resize.get("max_size", 1333)),
    )


def resolve_config(variant: str | dict[str, Any] | UPNConfig) -> UPNConfig:
    """``"large"`` / ``"tiny"`` / a reference-schema dict / a config -> a validated :class:`UPNConfig`."""
    if isinstance(variant, UPNConfig):
        return variant
    if isinstance(variant, str):
        try:
            return PRESETS[variant]
        except KeyError:
            raise ValueError(
                f"unknown UPN variant {variant!r}; choose one of {', '.join(PRESETS)} or pass a config dict"
            ) from None
    if isinstance(variant, dict):
        return config_from_reference_dict(variant)
    raise ValueError(f"UPN variant must be a preset name, a config dict or a UPNConfig, got {type(variant).__name__}")
