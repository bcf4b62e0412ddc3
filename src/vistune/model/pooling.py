"""Feature-map resampling for the visual token cap, fixed pooling ratios and per-grid caps.

``bilinear`` is ``F.interpolate(mode="bilinear", align_corners=False)`` (LLaVA-OneVision / transformers);
``adaptive_avg`` is ``F.adaptive_avg_pool2d`` (the study's "AdaptiveAVGPool"), which averages whole input
cells and so never aliases when shrinking. Both take ``(N, C, h, w)`` maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOL_METHODS = ("bilinear", "adaptive_avg")


def resample(maps: torch.Tensor, size: tuple[int, int], method: str = "bilinear") -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if method == "bilinear":
        return F.interpolate(maps, size=list(size), mode="bilinear", align_corners=False)
    if method == "adaptive_avg":
        return F.adaptive_avg_pool2d(maps, output_size=tuple(size))
    raise ValueError(f"visual.pool_method: unknown method {method!r}; known: {', '.join(POOL_METHODS)}")
