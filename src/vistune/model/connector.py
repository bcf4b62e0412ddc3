"""Connector registry: maps vision features into the LLM's embedding space.

``linear`` — one Linear; ``mlp2x_gelu`` — Linear, exact GELU, Linear (LLaVA-1.5/NeXT/OneVision);
``mlp2x_relu`` — the same with ReLU (the study's "2-layer ReLU MLP" baseline). Sub-module names follow
transformers' ``multi_modal_projector`` (``linear_1``, ``act``, ``linear_2``) so weights map one to one.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vistune.config import ConfigError, ConnectorConfig


class MLPConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.act = act
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LinearConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x):
        return self.linear_1(x)


CONNECTORS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "linear": lambda i, o, b: LinearConnector(i, o, b),
    "mlp2x_gelu": lambda i, o, b: MLPConnector(i, o, nn.GELU(), b),
    "mlp2x_relu": lambda i, o, b: MLPConnector(i, o, nn.ReLU(), b),
}

#: transformers' ``projector_hidden_act`` for each connector it can express
HF_ACTIVATION = {"mlp2x_gelu": "gelu", "mlp2x_relu": "relu"}


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.type not in CONNECTORS:
        raise ConfigError(
            f"connector.type: unknown connector {cfg.type!r}; known: {', '.join(sorted(CONNECTORS))}"
        )
    return CONNECTORS[cfg.type](in_dim, out_dim, cfg.bias)
