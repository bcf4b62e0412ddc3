"""Batching of assembled samples: padded batches and multimodal packing.

An *item* is one fully assembled training sample (``input_ids``/``labels`` with image tokens already
expanded, and its images' views)::

    {"input_ids": list[int], "labels": list[int], "pixel_values": Tensor(views, 3, S, S) | None,
     "image_sizes": list[(h, w)], "image_single_view": list[bool]}

**Packing** concatenates several items into one row. Attention stays inside each sample because position ids
restart at 0 at every sample start and no 2-D attention mask is passed: transformers then builds a
block-diagonal causal mask (SDPA / flex) or uses varlen kernels (flash-attention). The first label of every
sample is ignored so no token is trained to predict across a boundary. Images travel in sample order, so
the model's in-order splice of visual features stays correct. The loss is the same sum over the same
supervised tokens as in a padded batch, so packed and padded training agree (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


def _images(items: Sequence[dict[str, Any]], out: dict[str, Any]) -> None:
    views = [
        it["pixel_values"] for it in items if it.get("pixel_values") is not None and len(it["pixel_values"])
    ]
    sizes = [tuple(s) for it in items for s in it.get("image_sizes", [])]
    single = [bool(x) for it in items for x in it.get("image_single_view", [])]
    if views:
        out["pixel_values"] = torch.cat(views, dim=0)
        out["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        out["image_single_view"] = torch.tensor(single, dtype=torch.bool)


def collate_padded(
    items: Sequence[dict[str, Any]],
    pad_token_id: int,
    padding_side: str = "right",
    pad_to_multiple_of: int = 1,
) -> dict[str, Any]:
    """Pad to the longest item (rounded up to a multiple). Returns input_ids, attention_mask, labels (+ images)."""
    longest = max(len(it["input_ids"]) for it in items)
    longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        sl = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        ids[i, sl] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        labels[i, sl] = torch.as_tensor(it["labels"], dtype=torch.long)
        mask[i, sl] = 1
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    _images(items, out)
    out["num_tokens"] = int(mask.sum())
    out["num_padding"] = int(mask.numel() - mask.sum())
    out["seq_lens"] = [len(it["input_ids"]) for it in items]
    return out


def collate_packed(items: Sequence[dict[str, Any]], pad_to_multiple_of: int = 1) -> dict[str, Any]:
    """Concatenate ``items`` into one row with restarting positions and boundary-safe labels."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    lens: list[int] = []
    for it in items:
        n = len(it["input_ids"])
        ids.extend(int(x) for x in it["input_ids"])
        lab = [int(x) for x in it["labels"]]
        lab[0] = IGNORE_INDEX  # nothing predicts a sample's first token from the previous sample
        labels.extend(lab)
        pos.extend(range(n))
        lens.append(n)
    total = len(ids)
    pad = (-total) % pad_to_multiple_of
    if pad:
        # padding is one more "sample" of its own; it is never supervised
        ids.extend([ids[-1]] * pad)
        labels.extend([IGNORE_INDEX] * pad)
        pos.extend(range(pad))
    out: dict[str, Any] = {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([pos], dtype=torch.long),
        "attention_mask": None,
    }
    _images(items, out)
    out["num_tokens"] = total
    out["num_padding"] = pad
    out["seq_lens"] = lens
    return out


def plan_packs(
    lengths: Sequence[int], max_tokens: int, order: Sequence[int] | None = None
) -> list[list[int]]:
    """Group item indices into packs of at most ``max_tokens`` tokens.

    First-fit over items taken in ``order`` (default: as given), which keeps a sampler's ordering mostly
    intact; an item longer than ``max_tokens`` gets a pack of its own (the caller decides whether such items
    were allowed at all). O(n · open packs); open packs are capped so it stays linear in practice.
    """
    idx = list(order) if order is not None else list(range(len(lengths)))
    packs: list[list[int]] = []
    room: list[int] = []
    max_open = 64
    first_open = 0
    for i in idx:
        n = int(lengths[i])
        placed = False
        for p in range(first_open, len(packs)):
            if room[p] >= n:
                packs[p].append(i)
                room[p] -= n
                placed = True
                break
        if not placed:
            packs.append([i])
            room.append(max_tokens - n)
        if len(packs) - first_open > max_open:
            first_open = len(packs) - max_open
    return packs
