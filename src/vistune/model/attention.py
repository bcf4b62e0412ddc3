"""Document-isolated ("varlen") attention for packed sequences, plugged into transformers' attention registry.

A packed row holds several samples; attention must stay inside each. transformers can express that with a
dense block-diagonal mask, but building an L x L mask and running SDPA's masked (non-flash) kernel wastes
memory and time on long packs. Instead vistune registers an attention implementation, ``vistune_sdpa``,
that behaves exactly like ``sdpa`` unless the call carries ``cu_seq_lens_q`` (cumulative sample lengths, the
flash-attention varlen convention): then it runs causal attention per sample — through
``flash_attn_varlen_func`` when flash-attention is installed on a GPU, else one ``scaled_dot_product_attention``
call per sample with ``is_causal=True`` (flash / memory-efficient kernels, no mask). The model passes the
boundaries and a pre-built ``{"full_attention": None}`` mask mapping for packed rows, so transformers never
materialises the dense mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "vistune_sdpa"
_registered = False
#: ``scaled_dot_product_attention(..., enable_gqa=True)`` exists from torch 2.5
_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def _flash_varlen() -> Any:
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    return flash_attn_varlen_func


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``(B, H, L, D)`` q/k/v -> ``(B, L, H, D)`` like transformers' ``sdpa_attention_forward``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    fa = _flash_varlen() if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) else None
    if fa is not None:
        q = query[0].transpose(0, 1)  # (L, H, D)
        k = key[0].transpose(0, 1)
        v = value[0].transpose(0, 1)
        max_len = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
        out = fa(q, k, v, cu, cu, max_len, max_len, dropout_p=dropout, softmax_scale=scaling, causal=True)
        return out.unsqueeze(0), None
    bounds = cu.tolist()
    out = torch.empty_like(query)
    # grouped-query attention natively (torch >= 2.5) instead of materialising repeated K/V per sample
    gqa = {"enable_gqa": True} if groups > 1 and _SDPA_HAS_GQA else {}
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e <= s:
            continue
        q = query[:, :, s:e]
        k = key[:, :, s:e]
        v = value[:, :, s:e]
        if groups > 1 and not gqa:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out[:, :, s:e] = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, **gqa
        )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``vistune_sdpa`` (attention + mask) with transformers once; returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, varlen_sdpa_forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME


def cu_seqlens_from_positions(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Cumulative sample lengths of a single packed row whose positions restart at 0 per sample
    (``None`` when the row holds one sample or the batch has several rows)."""
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    pos = position_ids[0]
    starts = (pos == 0).nonzero(as_tuple=True)[0]
    if starts.numel() <= 1:
        return None
    if int(starts[0]) != 0:
        return None
    end = torch.tensor([pos.shape[0]], device=pos.device)
    return torch.cat([starts, end]).to(torch.int32)
