"""Connector registry: maps vision features into the LLM's embedding space.

``linear`` — one Linear; ``mlp2x_gelu`` — Linear, exact GELU, Linear (LLaVA-1.5/NeXT/OneVision);
``mlp2x_relu`` — the same with ReLU (the study's "2-layer ReLU MLP" baseline). Sub-module names follow
transformers' ``multi_modal_projector`` (``linear_1``, ``act``, ``linear_2``) so weights map one to one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
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


#: prefixes under which projector weights are stored: LLaVA (``model.mm_projector.0.weight``), transformers
#: (``model.multi_modal_projector.linear_1.weight``) and vistune (``connector.linear_1.weight``)
_PREFIXES = (
    "model.mm_projector.",
    "mm_projector.",
    "model.multi_modal_projector.",
    "multi_modal_projector.",
    "connector.",
)
_NEWLINE_KEYS = ("image_newline", "model.image_newline")
#: LLaVA's ``nn.Sequential`` indices -> vistune's names (``0`` Linear, ``1`` activation, ``2`` Linear)
_SEQUENTIAL = {"0": "linear_1", "2": "linear_2"}


def read_connector_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``(connector state dict in vistune's names, image_newline or None)`` from a projector file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"connector.path: {p} is not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(p))
        else:
            raw = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error naming the file
        raise ConfigError(f"connector.path: cannot read {p}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"connector.path: {p} does not hold a state dict")
    state: dict[str, torch.Tensor] = {}
    newline = None
    for key, value in raw.items():
        if key in _NEWLINE_KEYS:
            newline = value
            continue
        name = next((key[len(pre) :] for pre in _PREFIXES if key.startswith(pre)), None)
        if name is None:
            continue
        m = re.fullmatch(r"(\d+)\.(weight|bias)", name)
        if m:  # LLaVA: nn.Sequential, or a bare nn.Linear for ``linear``
            name = f"{_SEQUENTIAL.get(m.group(1), m.group(1))}.{m.group(2)}"
        elif name in ("weight", "bias"):
            name = f"linear_1.{name}"
        state[name] = value
    if not state:
        raise ConfigError(
            f"connector.path: {p} holds no projector weights (looked for keys starting with "
            f"{', '.join(_PREFIXES)}; found {sorted(raw)[:6]})"
        )
    return state, newline


def load_connector_weights(connector: nn.Module, newline: nn.Parameter | None, path: str | Path) -> None:
    """Initialise ``connector`` (and ``newline`` when the file has one) from a projector file; the names
    and shapes must match exactly (a clear error names the file and the first mismatch)."""
    state, nl = read_connector_weights(path)
    own = connector.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ConfigError(
            f"connector.path: {path} does not fit this connector: missing {missing}, unexpected {extra}"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(
                f"connector.path: {path}: {k} has shape {tuple(v.shape)}, the connector needs "
                f"{tuple(own[k].shape)} (vision hidden size -> LLM hidden size)"
            )
    nl = nl if newline is not None else None
    if nl is not None and tuple(nl.shape) != tuple(newline.shape):
        raise ConfigError(
            f"connector.path: {path}: image_newline has shape {tuple(nl.shape)}, the model needs "
            f"{tuple(newline.shape)}"
        )
    # everything checked: nothing is half-loaded when a file does not fit
    with torch.no_grad():
        connector.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        if nl is not None:
            newline.copy_(nl.to(newline.dtype))
