"""Training metrics: FLOPs and MFU (vision encoder included), loss spikes, metrics.jsonl, loss plots.

**FLOPs** (:class:`FlopsModel`) follow the usual dense-transformer accounting, per micro-batch:

* LLM body: ``c x N x T + a x L x d_attn x sum_i s_i^2`` with ``N`` the matmul parameters of the decoder
  layers, ``T`` the real (unpadded) tokens, ``s_i`` each sequence's length, ``L`` layers and ``d_attn =
  heads x head_dim``. ``c = 6`` when the LLM trains, ``4`` when it is frozen but gradients must flow through
  it to a trainable connector/vision/newline (forward + input gradients: the Stage-1 case), ``2`` for
  forward only; the attention term uses ``a = 12`` when a backward pass runs through the LLM, else ``4``.
  Causal masking is ignored (as in torchtitan/nanochat).
* LM head: only positions with a label are projected (vistune's loss), so ``h x V x d x n_supervised`` with
  ``h = 6`` if the LLM trains else ``4``.
* Vision encoder, per view: ``F_v = 2 x N_v x P + 4 x L_v x d_v x P^2`` (``P`` patches per view), times 3
  when the encoder trains and 1 when frozen (no gradient is needed for pixels).
* Connector: ``2 x N_c x P`` per view, times 3 if it trains, 2 if only the encoder behind it trains, else 1.

Embedding look-ups (token and position embeddings) are not matmuls and are not counted. **MFU** = FLOPs of
the step over all ranks / (step time x ranks x peak dense bf16 FLOP/s of the device). The peak comes from a
table of known GPUs or ``VISTUNE_PEAK_TFLOPS``; on CPU (or an unknown device) MFU is ``None`` and only
FLOP/s are reported. Activation-checkpointing recompute is not counted (that would be HFU).

**Spikes** (:class:`SpikeDetector`): a step's loss is a spike when its robust z-score against the previous
``window`` losses, ``z = (loss - median) / (1.4826 x MAD)``, exceeds ``threshold`` (only upward jumps).
The scale is floored at ``1e-3 x |median| + 1e-8`` so that a perfectly flat history does not flag noise.
No spike is flagged before ``min_history`` losses have been seen.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("vistune.train")

#: dense bf16 peak FLOP/s by device name fragment (first match wins; most specific first)
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("RTX 4090", 165e12),
)


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (``VISTUNE_PEAK_TFLOPS`` overrides); ``None`` if unknown/CPU."""
    env = os.environ.get("VISTUNE_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for frag, value in PEAK_BF16_FLOPS:
        if frag in name:
            return value
    return None


def _matmul_params(module: nn.Module) -> int:
    """Elements of the >= 2-D parameters of ``module`` that are not embedding tables."""
    skip = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2 and id(p) not in skip)


class FlopsModel:
    """Per-micro-batch training FLOPs of a :class:`~vistune.model.lmm.VistuneModel` (rules above)."""

    def __init__(self, model: nn.Module, trainable: Iterable[str]) -> None:
        trainable = set(trainable)
        decoder = model.llm.get_decoder()
        cfg = model.llm.config
        self.llm_layers = int(cfg.num_hidden_layers)
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        self.d_attn = heads * head_dim
        self.n_llm = _matmul_params(decoder.layers)
        self.n_head = int(model.llm.get_output_embeddings().weight.numel())
        enc = model.vision.model
        self.n_vision = _matmul_params(enc)
        vcfg = enc.config
        self.vision_layers = int(vcfg.num_hidden_layers)
        self.d_vision = int(vcfg.hidden_size)
        geo = model.geometry
        self.patches = geo.tokens_per_view + (1 if model.vision.spec.has_cls else 0)
        self.n_connector = _matmul_params(model.connector)
        upstream = bool(trainable & {"vision", "connector", "newline"})
        llm_trains = "llm" in trainable
        self.c_llm = 6 if llm_trains else (4 if upstream else 2)
        self.a_llm = 12 if (llm_trains or upstream) else 4
        self.c_head = 6 if llm_trains else (4 if upstream else 2)
        self.c_vision = 3 if "vision" in trainable else 1
        self.c_connector = 3 if "connector" in trainable else (2 if "vision" in trainable else 1)

    def vision_flops_per_view(self) -> float:
        P = self.patches
        return 2.0 * self.n_vision * P + 4.0 * self.vision_layers * self.d_vision * P * P

    def batch_flops(self, seq_lengths: Iterable[int], num_views: int, num_supervised: int) -> float:
        lens = [int(s) for s in seq_lengths]
        T = sum(lens)
        sq = sum(s * s for s in lens)
        llm = self.c_llm * self.n_llm * T + self.a_llm * self.llm_layers * self.d_attn * sq
        head = self.c_head * self.n_head * num_supervised
        vision = self.c_vision * self.vision_flops_per_view() * num_views
        connector = self.c_connector * 2.0 * self.n_connector * self.patches * num_views
        return float(llm + head + vision + connector)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory (GiB), or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform != "darwin" else rss / 2**30


class SpikeDetector:
    """Robust z-score spike detection over a sliding window (rule in the module docstring)."""

    def __init__(self, window: int = 100, threshold: float = 6.0, min_history: int = 20) -> None:
        self.window = window
        self.threshold = threshold
        self.min_history = min_history
        self.history: deque[float] = deque(maxlen=window)

    def score(self, loss: float) -> float | None:
        """The robust z-score of ``loss`` against the history (``None`` while the history is short)."""
        if len(self.history) < self.min_history:
            return None
        values = sorted(self.history)
        med = _median(values)
        mad = _median(sorted(abs(v - med) for v in values))
        scale = max(1.4826 * mad, 1e-3 * abs(med) + 1e-8)
        return (loss - med) / scale

    def update(self, loss: float) -> tuple[bool, float | None]:
        """Score ``loss``, then add it to the history; returns ``(is_spike, z)``. Non-finite losses are
        neither scored nor remembered."""
        if not math.isfinite(loss):
            return False, None
        z = self.score(loss)
        self.history.append(loss)
        return (z is not None and z > self.threshold), z

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state.get("history", []), maxlen=self.window)


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


def _finite_or_null(value: Any) -> Any:
    """Strict JSON: NaN/inf (a skipped non-finite step) become ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl`` (one strict-JSON object per line; non-finite numbers are ``null``);
    rank 0 writes it."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._fh.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def rewind(self, stage_index: int, step: int) -> None:
        """Drop records after ``(stage_index, step)``: on resume those steps are trained again."""
        if not self.enabled or not self.path.is_file():
            return
        self.close()
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            pos = (rec.get("stage_index", 0), rec.get("step", 0))
            if pos <= (stage_index, step):
                keep.append(line)
        from vistune.fsutil import atomic_write_text

        atomic_write_text(self.path, "".join(x + "\n" for x in keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_loss(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss curve PNG with spikes (red) and skipped non-finite steps (grey ticks) marked."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    good = [r for r in records if r.get("loss") is not None and math.isfinite(r["loss"])]
    steps = [r["step"] for r in good]
    losses = [r["loss"] for r in good]
    spikes = [(r["step"], r["loss"]) for r in records if r.get("spike")]
    bad = [r["step"] for r in records if r.get("skipped_step")]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, lw=1.2, color="#1f77b4", label="loss")
    if spikes:
        ax.scatter(*zip(*spikes, strict=True), color="red", zorder=3, s=28, label=f"spike ({len(spikes)})")
    for k, s in enumerate(bad):
        ax.axvline(s, color="grey", alpha=0.5, lw=0.8, label="non-finite step" if k == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per supervised token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class TensorBoard:
    """Optional TensorBoard scalars; silently absent (with one warning) when tensorboard is not installed."""

    def __init__(self, logdir: str | Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard missing or broken
            log.warning("logging.tensorboard is on but tensorboard is not installed; skipping it")
            return
        self.writer = SummaryWriter(str(logdir))

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        prefix = record.get("stage", "train")
        for k, v in record.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "stage_index"):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    if isinstance(vv, int | float):
                        self.writer.add_scalar(f"{prefix}/{k}/{kk}", vv, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = [
    "FlopsModel",
    "MetricsLog",
    "PEAK_BF16_FLOPS",
    "SpikeDetector",
    "TensorBoard",
    "peak_flops",
    "peak_memory_gb",
    "plot_loss",
    "read_metrics",
]
