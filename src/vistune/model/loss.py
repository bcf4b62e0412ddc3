"""Memory-lean next-token cross-entropy.

Full-vocabulary fp32 logits for every position of a long multimodal batch dominate peak memory (a 25k-token
sequence with a 152k vocabulary is 15 GB of fp32 logits). Instead we (1) select only the positions that
carry a label — image tokens, prompts and padding never reach the vocabulary projection — and (2) project
and score them in fixed-size chunks under activation checkpointing, so at most one chunk of logits is alive
at a time, in the forward and in the backward pass. The result is the *sum* of token losses and the token
count, so callers can normalise across micro-batches and ranks (principle 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _chunk_loss(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(h, weight, bias).float()
    return F.cross_entropy(logits, y, reduction="sum")


def shifted_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the positions that predict them: position t predicts token t+1."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of CE over positions whose target != -100, and their count.

    ``hidden`` is ``(..., H)``, ``targets`` the same leading shape, already aligned (see
    :func:`shifted_labels`).
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    keep = (y != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    n = torch.tensor(keep.numel(), device=hidden.device)
    if keep.numel() == 0:
        return hidden.sum() * 0.0, n
    h = h.index_select(0, keep)
    y = y.index_select(0, keep)
    total = hidden.new_zeros((), dtype=torch.float32)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    for start in range(0, h.shape[0], chunk_size):
        hs, ys = h[start : start + chunk_size], y[start : start + chunk_size]
        if needs_grad and h.shape[0] > chunk_size:
            total = total + checkpoint(_chunk_loss, hs, weight, bias, ys, use_reentrant=False)
        else:
            total = total + _chunk_loss(hs, weight, bias, ys)
    return total, n
