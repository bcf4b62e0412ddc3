"""Typed, validated configuration for vistune (pydantic), YAML loading and ``KEY=VALUE`` overrides."""

from vistune.config.io import ConfigError, apply_overrides, dump_yaml, load_yaml, parse_override, validate
from vistune.config.model import (
    CONFIG_VERSION,
    ConnectorConfig,
    LLMConfig,
    ModelConfig,
    VisionConfig,
    VisualConfig,
)

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "ConnectorConfig",
    "LLMConfig",
    "ModelConfig",
    "VisionConfig",
    "VisualConfig",
    "apply_overrides",
    "dump_yaml",
    "load_yaml",
    "parse_override",
    "validate",
]
