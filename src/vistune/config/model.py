"""Typed model configuration: vision encoder + connector + LLM + the visual representation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from vistune.model.anyres import GeometryError, format_grids, parse_budget, parse_grids

CONFIG_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class VisualConfig(_Strict):
    """The visual representation: every knob the study varies. Overridable at inference time.

    Defaults are LLaVA-OneVision's: AnyRes over the 1x1..6x6 grid set, squashed base view, unpadding,
    a newline per row, and the ``anyres_max_9`` total cap (9 tiles' worth of grid tokens, 1.1 slack).
    """

    anyres: bool = Field(True, description="tile the image into a grid of views; False = one view per image")
    grids: Any = Field(
        "(1x1),...,(6x6)", description="grid set: list of [rows, cols], 'RxC,...', range, 'max:RxC'"
    )
    base_view: Literal["squash", "pad", "none"] = Field(
        "squash", description="global view: squash to SxS (reference), aspect-preserving pad, or none"
    )
    unpad: bool = Field(True, description="drop feature rows/cols that only saw padding")
    newline: bool = Field(True, description="append the learned newline vector after every row")
    cap: Literal["none", "per_grid", "total"] = Field(
        "total", description="token cap: none | per_grid (study: T_new = tau/(ab+1)) | total (anyres_max_N)"
    )
    max_tokens: int | str | None = Field(
        "9 tiles",
        description="tau: an int, 'N tiles' (N x tokens per view) or an expression like '(4+1)*729'",
    )
    cap_slack: float = Field(1.1, gt=0, description="total cap resizes only when sqrt(h*w/tau) exceeds this")
    pool_method: Literal["bilinear", "adaptive_avg"] = "bilinear"
    pool_position: Literal["after", "before"] = Field(
        "after", description="resample after or before the connector"
    )
    pool_ratio: float | None = Field(None, gt=0, le=1, description="fixed per-side pooling ratio, e.g. 0.5")
    min_long_edge_tiles: int | None = Field(
        None, ge=1, description="resolution lifting: long edge >= k * encoder size before tiling"
    )
    unpad_rounding: Literal["hf", "official"] = "hf"

    @field_validator("grids", mode="before")
    @classmethod
    def _grids(cls, v: Any) -> tuple[tuple[int, int], ...]:
        try:
            return parse_grids(v)
        except GeometryError as exc:
            raise ValueError(str(exc).removeprefix("visual.grids: ")) from None

    @field_serializer("grids")
    def _grids_out(self, grids: tuple[tuple[int, int], ...]) -> str:
        return format_grids(grids)

    @field_validator("max_tokens")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        try:
            parse_budget(v, 1)
        except GeometryError as exc:
            raise ValueError(str(exc).removeprefix("visual.max_tokens: ")) from None
        return v

    @model_validator(mode="after")
    def _cap_needs_budget(self) -> VisualConfig:
        if self.cap != "none" and self.max_tokens is None:
            raise ValueError(f"cap={self.cap!r} needs max_tokens (e.g. '9 tiles' or 3645)")
        return self

    def override(self, **changes: Any) -> VisualConfig:
        """A validated copy with some fields changed (used for inference-time overrides)."""
        data = self.model_dump()
        data.update(changes)
        return VisualConfig.model_validate(data)


class _Source(_Strict):
    """Where weights come from: a local folder, a built-in preset, or an HF config dict (random init)."""

    path: str | None = None
    preset: str | None = None
    hf_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("path", "preset", "hf_config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of path (a local folder), preset (built-in) or hf_config; got {given or 'none'}"
            )
        return self


class VisionConfig(_Source):
    type: str | None = Field(
        None, description="encoder registry key (siglip | clip); inferred from the preset or HF config"
    )
    feature_layer: int = Field(
        -1, description="hidden state to take (negative counts from the end; LLaVA CLIP: -2)"
    )
    keep_cls: bool = Field(False, description="keep the CLS token (CLIP only)")
    drop_last_layer: bool = Field(
        False, description="OneVision: delete the last encoder layer, take its output"
    )
    image_mean: tuple[float, float, float] | None = Field(
        None, description="default: the checkpoint's or family's"
    )
    image_std: tuple[float, float, float] | None = None


class ConnectorConfig(_Strict):
    type: str = Field("mlp2x_gelu", description="connector registry key: linear | mlp2x_gelu | mlp2x_relu")
    bias: bool = True
    path: str | None = Field(
        None,
        description="initial connector weights (.safetensors or .bin): a pretrained projector such as "
        "LLaVA's mm_projector.bin (its --pretrain_mm_mlp_adapter), transformers' multi_modal_projector.* or "
        "vistune's connector.* weights; an image_newline in the file initialises the newline too. "
        "Default: random init",
    )


class LLMConfig(_Source):
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    tokenizer: str | None = Field(
        None, description="tokenizer folder (default: the LLM folder, or the shipped tiny tokenizer)"
    )


class ModelConfig(_Strict):
    config_version: int = CONFIG_VERSION
    vision: VisionConfig
    connector: ConnectorConfig = ConnectorConfig()
    llm: LLMConfig
    visual: VisualConfig = VisualConfig()
    chat_template: str = Field("qwen_1_5", description="chat template registry key")
    image_token: str = "<image>"
    video_token: str | None = Field("<video>", description="None: the tokenizer has no video token")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    def with_visual(self, **changes: Any) -> ModelConfig:
        return self.model_copy(update={"visual": self.visual.override(**changes)})
