"""AnyRes geometry and visual-token accounting: the single source of truth.

This module is pure Python (no torch). The processor uses it to cut pixels and to expand ``<image>``
placeholders; the model uses it to stitch, unpad, resample and newline the feature maps. A property test
checks that :func:`plan_image` predicts exactly the number of features the model produces.

Convention: every size is ``(height, width)``; grids are ``(rows, cols)``. The official LLaVA code uses
``(width, height)``; the interop layer converts at the boundary.

Pipeline for one image (all knobs live in :class:`vistune.config.VisualConfig`)::

    image (h, w)
      -> resolution lifting        (min_long_edge_tiles: long edge >= k * S, aspect kept)
      -> best grid                 (select_best_resolution over grids * S, same rule as official/HF)
      -> resize into canvas + pad  (aspect kept, ceil rule, centred, black)
      -> crops (raster order) + base view (squash | pad | none)
      -> encoder: s x s tokens per view (s = S // patch)
      -> fixed pooling             (pool_ratio: s -> v0 = ceil(s * r))
      -> per-grid cap              (cap=per_grid: if (n_views)*v0^2 > tau: v = floor(sqrt(tau / n_views)))
      -> stitch grid views         (rows*v, cols*v)
      -> unpad                     (drop the rows/cols that only saw padding)
      -> total cap                 (cap=total, OneVision anyres_max_N: ratio = sqrt(h*w / tau);
                                     resize to (h // ratio, w // ratio) only if ratio > cap_slack)
      -> newline per row, base first
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

Grid = tuple[int, int]

#: The LLaVA-1.6 grid set "{2x2, 1x{2,3}, {2,3}x1}" in transformers' default order (rows, cols).
NAMED_GRID_SETS: dict[str, tuple[Grid, ...]] = {
    "llava_next": ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3)),
}

_GRID_RE = re.compile(r"\(?\s*(\d+)\s*[xX×]\s*(\d+)\s*\)?")


class GeometryError(ValueError):
    """An impossible visual configuration; the message names the config field."""


# --------------------------------------------------------------------------------------------------
# Grid sets
# --------------------------------------------------------------------------------------------------
def parse_grids(spec: Any) -> tuple[Grid, ...]:
    """Parse a grid set into a tuple of ``(rows, cols)``.

    Accepted forms:

    * a list of pairs ``[[1, 2], [2, 2]]``;
    * an explicit string ``"2x2,1x2,1x3,2x1,3x1"``;
    * the official range syntax ``"(1x1),...,(6x6)"``: the first and last entries bound rows and
      columns, every combination is included (rows outer, columns inner, as transformers orders it);
    * ``"max:4x4"`` (the study's "max grids 4x4") = ``"(1x1),...,(4x4)"``;
    * a named set: ``"llava_next"`` (= {2x2, 1x{2,3}, {2,3}x1}).

    Duplicates are dropped, first occurrence wins (order matters only for ties in grid selection).
    """
    grids: list[Grid]
    if isinstance(spec, str):
        text = spec.strip()
        if text in NAMED_GRID_SETS:
            return NAMED_GRID_SETS[text]
        if text.startswith("max:"):
            m = _GRID_RE.fullmatch(text[4:].strip())
            if not m:
                raise GeometryError(f"visual.grids: cannot parse {spec!r}; expected e.g. 'max:6x6'")
            r1, c1 = int(m.group(1)), int(m.group(2))
            grids = [(r, c) for r in range(1, r1 + 1) for c in range(1, c1 + 1)]
        elif "..." in text:
            found = _GRID_RE.findall(text)
            if len(found) < 2:
                raise GeometryError(
                    f"visual.grids: range {spec!r} needs a first and a last grid, e.g. '(1x1),...,(6x6)'"
                )
            (r0, c0), (r1, c1) = (int(found[0][0]), int(found[0][1])), (int(found[-1][0]), int(found[-1][1]))
            if r0 > r1 or c0 > c1:
                raise GeometryError(f"visual.grids: range {spec!r} runs backwards")
            grids = [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]
        else:
            parts = [p for p in re.split(r"[,;\s]+", text) if p]
            grids = []
            for part in parts:
                m = _GRID_RE.fullmatch(part)
                if not m:
                    raise GeometryError(
                        f"visual.grids: cannot parse {part!r} in {spec!r}; use 'RxC' entries, a range "
                        f"'(1x1),...,(6x6)', 'max:RxC' or one of {sorted(NAMED_GRID_SETS)}"
                    )
                grids.append((int(m.group(1)), int(m.group(2))))
    elif isinstance(spec, Iterable):
        grids = []
        for item in spec:
            if isinstance(item, str):
                grids.extend(parse_grids(item))
                continue
            try:
                r, c = item
                grids.append((int(r), int(c)))
            except (TypeError, ValueError):
                raise GeometryError(f"visual.grids: entry {item!r} is not a (rows, cols) pair") from None
    else:
        raise GeometryError(f"visual.grids: unsupported value {spec!r}")
    out: list[Grid] = []
    for g in grids:
        if g[0] < 1 or g[1] < 1:
            raise GeometryError(f"visual.grids: grid {g[0]}x{g[1]} must have at least one row and one column")
        if g not in out:
            out.append(g)
    if not out:
        raise GeometryError("visual.grids: the grid set is empty; give at least one grid such as '1x1'")
    return tuple(out)


def format_grids(grids: Sequence[Grid]) -> str:
    return ",".join(f"{r}x{c}" for r, c in grids)


# --------------------------------------------------------------------------------------------------
# Token budget ("tau")
# --------------------------------------------------------------------------------------------------
_BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _eval_int_expr(text: str) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            return _BIN_OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(text)

    return ev(ast.parse(text, mode="eval"))


def parse_budget(value: Any, tokens_per_view: int) -> int | None:
    """Resolve ``visual.max_tokens`` to a number of tokens.

    ``None`` -> no budget; an int -> tokens; ``"9 tiles"`` -> 9 * tokens_per_view (OneVision's
    ``anyres_max_9``); an arithmetic expression such as ``"(4+1)*729"`` (the study's notation).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise GeometryError(f"visual.max_tokens: expected a number, got {value!r}")
    if isinstance(value, int):
        tau = value
    elif isinstance(value, float):
        tau = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:tiles?|t)", text)
        if m:
            tau = int(round(float(m.group(1)) * tokens_per_view))
        else:
            try:
                tau = _eval_int_expr(text)
            except (ValueError, SyntaxError):
                raise GeometryError(
                    f"visual.max_tokens: cannot parse {value!r}; use an integer, 'N tiles' or an expression like '(4+1)*729'"
                ) from None
    else:
        raise GeometryError(f"visual.max_tokens: unsupported value {value!r}")
    if tau <= 0:
        raise GeometryError(f"visual.max_tokens: must be positive, got {value!r}")
    return tau


# --------------------------------------------------------------------------------------------------
# Pixel geometry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderGeometry:
    """What the vision encoder declares about itself."""

    image_size: int  # S: side of one square view in pixels
    patch_size: int
    cls_tokens: int = 0  # 1 when a CLIP encoder keeps its CLS token (only the base/single view keeps it)

    @property
    def tokens_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_view(self) -> int:
        return self.tokens_per_side**2


def select_best_resolution(image_hw: Grid, candidates_hw: Sequence[Grid]) -> Grid:
    """Pick the candidate canvas that keeps the most pixels, then wastes the fewest (first wins ties).

    Identical to the official LLaVA code and transformers, in (height, width).
    """
    h, w = image_hw
    best: Grid | None = None
    best_eff, best_waste = -1, math.inf
    for ch, cw in candidates_hw:
        scale = min(cw / w, ch / h)
        dw, dh = int(w * scale), int(h * scale)
        eff = min(dw * dh, w * h)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ch, cw), eff, waste
    assert best is not None
    return best


def fit_inside(image_hw: Grid, target_hw: Grid) -> Grid:
    """Aspect-preserving size of ``image_hw`` fitted inside ``target_hw`` (the official/HF ceil rule)."""
    h, w = image_hw
    th, tw = target_hw
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return max(1, min(math.ceil(h * scale_w), th)), tw
    return th, max(1, min(math.ceil(w * scale_h), tw))


def lift_resolution(image_hw: Grid, min_long_edge: int | None) -> Grid:
    """Upscale (aspect kept) so the long edge is at least ``min_long_edge``; never downscales."""
    h, w = image_hw
    if not min_long_edge or max(h, w) >= min_long_edge:
        return image_hw
    scale = min_long_edge / max(h, w)
    if h >= w:
        return min_long_edge, max(1, round(w * scale))
    return max(1, round(h * scale)), min_long_edge


def unpad_box(feature_hw: Grid, image_hw: Grid, rounding: str = "hf") -> tuple[int, int, int, int]:
    """Rows/cols of a stitched feature map that saw image pixels: ``(top, bottom, left, right)``.

    ``rounding="hf"`` uses ``int(round(x, 7))`` (robust to float artefacts such as 12.9999999);
    ``"official"`` uses plain ``int(x)`` like the original LLaVA code.
    """
    cur_h, cur_w = feature_hw
    h, w = image_hw
    # like transformers, an extreme sliver may keep zero rows/columns (its rows are then newline-only)
    rnd = (lambda x: int(round(x, 7))) if rounding == "hf" else int
    if w / h > cur_w / cur_h:
        new_h = rnd(h * (cur_w / w))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = rnd(w * (cur_h / h))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def total_cap_shape(hw: Grid, tau: int, slack: float) -> Grid:
    """OneVision ``anyres_max_N`` rule: shrink (aspect kept) only when sqrt(h*w/tau) > slack."""
    h, w = hw
    ratio = math.sqrt(h * w / tau)
    if ratio > slack:
        return max(1, int(h // ratio)), max(1, int(w // ratio))
    return hw


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenCount:
    base: int
    grid: int
    newlines: int
    grid_before_cap: int
    views: int  # encoder inputs (crops) for this image

    @property
    def total(self) -> int:
        return self.base + self.grid + self.newlines

    def as_dict(self) -> dict[str, int]:
        return {
            "base": self.base,
            "grid": self.grid,
            "newlines": self.newlines,
            "grid_before_cap": self.grid_before_cap,
            "total": self.total,
            "views": self.views,
        }


@dataclass(frozen=True)
class ImagePlan:
    """Everything the processor and the model need to know about one image."""

    image_hw: Grid  # original size
    lifted_hw: Grid  # after resolution lifting (== image_hw when off)
    single_view: bool  # one squared view (multi-image samples, or anyres off)
    view_mode: str  # how the single/base view is made: squash | pad | none
    grid: Grid  # (rows, cols); (0, 0) for single views
    canvas_hw: Grid  # best resolution (rows*S, cols*S)
    resized_hw: Grid  # image size inside the canvas
    pad_top_left: Grid  # where the resized image sits on the canvas
    crop_boxes: tuple[tuple[int, int, int, int], ...]  # (top, left, bottom, right) on the canvas, raster
    tokens_per_side: int  # s, from the encoder
    view_side: int  # side of every view's token map after fixed pooling and per-grid cap
    base_side: int  # side of the base view's token map (0 if no base)
    stitched_hw: Grid  # grid map after stitching
    unpad: tuple[int, int, int, int]  # (top, bottom, left, right) kept rows/cols
    final_hw: Grid  # grid map after unpadding and the total cap
    newline: bool
    tokens: TokenCount = field(compare=False)

    @property
    def unpadded_hw(self) -> Grid:
        top, bottom, left, right = self.unpad
        return bottom - top, right - left

    @property
    def num_views(self) -> int:
        return self.tokens.views

    @property
    def num_tokens(self) -> int:
        return self.tokens.total

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_hw": list(self.image_hw),
            "lifted_hw": list(self.lifted_hw),
            "single_view": self.single_view,
            "grid": f"{self.grid[0]}x{self.grid[1]}",
            "canvas_hw": list(self.canvas_hw),
            "resized_hw": list(self.resized_hw),
            "pad_top_left": list(self.pad_top_left),
            "crops": [list(b) for b in self.crop_boxes],
            "tokens_per_side": self.tokens_per_side,
            "view_side": self.view_side,
            "base_side": self.base_side,
            "stitched_hw": list(self.stitched_hw),
            "unpad": list(self.unpad),
            "unpadded_hw": list(self.unpadded_hw),
            "final_hw": list(self.final_hw),
            "tokens": self.tokens.as_dict(),
        }


def _attr(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def pooled_side(s: int, pool_ratio: float | None) -> int:
    """Side of a view's token map after the fixed pooling ratio (ceil, like transformers' video pooling)."""
    if not pool_ratio or pool_ratio >= 1.0:
        return s
    return max(1, math.ceil(s * pool_ratio - 1e-9))


def plan_image(
    image_hw: Sequence[int], visual: Any, geometry: EncoderGeometry, single_view: bool = False
) -> ImagePlan:
    """Plan one image. ``visual`` is a :class:`~vistune.config.VisualConfig` (or a dict with its fields)."""
    hw = (int(image_hw[0]), int(image_hw[1]))
    return _plan_cached(hw, _freeze(visual), geometry, bool(single_view))


def _freeze(visual: Any) -> tuple:
    keys = (
        "anyres",
        "grids",
        "base_view",
        "unpad",
        "newline",
        "cap",
        "max_tokens",
        "cap_slack",
        "pool_ratio",
        "min_long_edge_tiles",
        "unpad_rounding",
    )
    vals = []
    for k in keys:
        v = _attr(visual, k, _DEFAULTS[k])
        if k == "grids":
            v = parse_grids(v)
        vals.append(v)
    return tuple(vals)


_DEFAULTS: dict[str, Any] = {
    "anyres": True,
    "grids": "(1x1),...,(6x6)",
    "base_view": "squash",
    "unpad": True,
    "newline": True,
    "cap": "total",
    "max_tokens": "9 tiles",
    "cap_slack": 1.1,
    "pool_ratio": None,
    "min_long_edge_tiles": None,
    "unpad_rounding": "hf",
}


@lru_cache(maxsize=65536)
def _plan_cached(hw: Grid, frozen: tuple, geometry: EncoderGeometry, single_view: bool) -> ImagePlan:
    (
        anyres,
        grids,
        base_view,
        do_unpad,
        newline,
        cap,
        max_tokens,
        slack,
        pool_ratio,
        lift_tiles,
        rounding,
    ) = frozen
    h, w = hw
    if h < 1 or w < 1:
        raise GeometryError(f"image size must be at least 1x1 pixels, got {h}x{w}")
    S = geometry.image_size
    s = geometry.tokens_per_side
    v0 = pooled_side(s, pool_ratio)
    per_view = v0 * v0
    tau = parse_budget(max_tokens, per_view) if cap != "none" else None

    if single_view or not anyres:
        mode = "pad" if single_view else ("pad" if base_view == "pad" else "squash")
        if mode == "pad":  # expand to a square at the original resolution, then resize to S x S
            m = max(h, w)
            canvas_hw, resized, pad_tl = (m, m), hw, ((m - h) // 2, (m - w) // 2)
        else:
            canvas_hw, resized, pad_tl = (S, S), (S, S), (0, 0)
        n_new = 1 if newline else 0
        tokens = TokenCount(
            base=per_view + geometry.cls_tokens, grid=0, newlines=n_new, grid_before_cap=0, views=1
        )
        return ImagePlan(
            image_hw=hw,
            lifted_hw=hw,
            single_view=True,
            view_mode=mode,
            grid=(0, 0),
            canvas_hw=canvas_hw,
            resized_hw=resized,
            pad_top_left=pad_tl,
            crop_boxes=(),
            tokens_per_side=s,
            view_side=v0,
            base_side=v0,
            stitched_hw=(0, 0),
            unpad=(0, 0, 0, 0),
            final_hw=(0, 0),
            newline=bool(newline),
            tokens=tokens,
        )

    lifted = lift_resolution(hw, lift_tiles * S if lift_tiles else None)
    candidates = [(r * S, c * S) for r, c in grids]
    canvas = select_best_resolution(lifted, candidates)
    rows, cols = canvas[0] // S, canvas[1] // S
    resized = fit_inside(lifted, canvas)
    pad_tl = ((canvas[0] - resized[0]) // 2, (canvas[1] - resized[1]) // 2)
    boxes = tuple((r * S, c * S, (r + 1) * S, (c + 1) * S) for r in range(rows) for c in range(cols))
    has_base = base_view != "none"
    n_views = rows * cols + (1 if has_base else 0)

    v = v0
    if cap == "per_grid" and tau is not None and n_views * v0 * v0 > tau:
        v = max(1, math.isqrt(tau // n_views))  # == floor(sqrt(tau / n_views))
    stitched = (rows * v, cols * v)
    if do_unpad:
        box = unpad_box(stitched, lifted, rounding)
    else:
        box = (0, stitched[0], 0, stitched[1])
    unpadded = (box[1] - box[0], box[3] - box[2])
    final = unpadded
    if cap == "total" and tau is not None:
        final = total_cap_shape(unpadded, tau, slack)
    base_side = v if has_base else 0
    tokens = TokenCount(
        base=base_side * base_side + (geometry.cls_tokens if has_base else 0),
        grid=final[0] * final[1],
        newlines=final[0] if newline else 0,
        grid_before_cap=unpadded[0] * unpadded[1],
        views=n_views,
    )
    return ImagePlan(
        image_hw=hw,
        lifted_hw=lifted,
        single_view=False,
        view_mode=base_view,
        grid=(rows, cols),
        canvas_hw=canvas,
        resized_hw=resized,
        pad_top_left=pad_tl,
        crop_boxes=boxes,
        tokens_per_side=s,
        view_side=v,
        base_side=base_side,
        stitched_hw=stitched,
        unpad=box,
        final_hw=final,
        newline=bool(newline),
        tokens=tokens,
    )


def count_tokens(
    image_hw: Sequence[int], visual: Any, geometry: EncoderGeometry, single_view: bool = False
) -> TokenCount:
    """Exact number of visual tokens (with a per-part breakdown) for one image."""
    return plan_image(image_hw, visual, geometry, single_view).tokens


def check_visual_config(visual: Any, geometry: EncoderGeometry) -> None:
    """Fail early, naming the field, for configurations that cannot work with this encoder."""
    grids = parse_grids(_attr(visual, "grids", _DEFAULTS["grids"]))
    s = geometry.tokens_per_side
    v0 = pooled_side(s, _attr(visual, "pool_ratio"))
    cap = _attr(visual, "cap", _DEFAULTS["cap"])
    if cap == "none":
        return
    tau = parse_budget(_attr(visual, "max_tokens", _DEFAULTS["max_tokens"]), v0 * v0)
    if tau is None:
        raise GeometryError(f"visual.max_tokens: cap={cap!r} needs a token budget (e.g. '9 tiles' or 3645)")
    if tau < v0 * v0:
        raise GeometryError(
            f"visual.max_tokens: {tau} tokens is smaller than one base view ({v0 * v0} tokens = "
            f"{v0}x{v0} for this encoder); use at least {v0 * v0}"
        )
    if cap == "per_grid":
        has_base = _attr(visual, "base_view", "squash") != "none"
        worst = max(r * c for r, c in grids) + (1 if has_base else 0)
        if tau < worst:
            raise GeometryError(
                f"visual.max_tokens: {tau} tokens cannot give each of the {worst} views of the largest grid "
                "even one token; raise it or use smaller grids"
            )
