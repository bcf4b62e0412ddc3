"""Draw an AnyRes plan: the image on its canvas with the crop grid, the base view, the stitched feature map
with the unpadded region, and the capped map with its newline column. Used by ``vistune tokens --plot`` and
the docs figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vistune.model.anyres import EncoderGeometry, ImagePlan, plan_image


def render_plan(
    image: Any, plan: ImagePlan, geometry: EncoderGeometry, path: str | Path, title: str = ""
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    path = Path(path)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), gridspec_kw={"width_ratios": [1.2, 0.7, 1.1, 1.1]})
    t = plan.tokens
    # 1. canvas + crops
    ax = axes[0]
    ch, cw = plan.canvas_hw
    canvas = Image.new("RGB", (cw, ch), (0, 0, 0))
    rh, rw = plan.resized_hw
    canvas.paste(
        image.resize((rw, rh), Image.Resampling.BICUBIC), (plan.pad_top_left[1], plan.pad_top_left[0])
    )
    ax.imshow(canvas)
    for i, (top, left, bottom, right) in enumerate(plan.crop_boxes):
        ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="yellow", lw=1.5))
        ax.text(left + 4, top + 4, str(i + 1), color="yellow", va="top", fontsize=9)
    ax.set_title(
        f"1. image {plan.image_hw[1]}x{plan.image_hw[0]} -> grid {plan.grid[0]}x{plan.grid[1]}\n"
        f"canvas {cw}x{ch}, black padding, crops in raster order",
        fontsize=9,
    )
    ax.axis("off")
    # 2. base view
    ax = axes[1]
    S = geometry.image_size
    if plan.view_mode == "none":
        ax.text(0.5, 0.5, "no base view", ha="center", va="center")
    else:
        ax.imshow(image.resize((S, S), Image.Resampling.BICUBIC))
    ax.set_title(f"2. base view ({plan.view_mode}) {S}x{S}\n{t.base} tokens, first in sequence", fontsize=9)
    ax.axis("off")
    # 3. stitched map + unpad box
    ax = axes[2]
    sh, sw = plan.stitched_hw
    ax.set_xlim(0, sw)
    ax.set_ylim(sh, 0)
    ax.add_patch(Rectangle((0, 0), sw, sh, color="#dddddd"))
    top, bottom, left, right = plan.unpad
    ax.add_patch(Rectangle((left, top), right - left, bottom - top, color="#4c72b0", alpha=0.8))
    v = plan.view_side
    for r in range(1, plan.grid[0]):
        ax.axhline(r * v, color="white", lw=1)
    for c in range(1, plan.grid[1]):
        ax.axvline(c * v, color="white", lw=1)
    ax.set_aspect("equal")
    ax.set_title(
        f"3. stitched token map {sw}x{sh} ({v}² per crop)\nunpadded (blue) {right - left}x{bottom - top} "
        f"= {t.grid_before_cap} tokens",
        fontsize=9,
    )
    # 4. capped map + newline column
    ax = axes[3]
    fh, fw = plan.final_hw
    ax.set_xlim(0, fw + 1)
    ax.set_ylim(fh, 0)
    ax.add_patch(Rectangle((0, 0), fw, fh, color="#55a868", alpha=0.85))
    if plan.newline:
        ax.add_patch(Rectangle((fw, 0), 1, fh, color="#c44e52"))
    ax.set_aspect("equal")
    capped = " (capped)" if t.grid != t.grid_before_cap else " (under the cap)"
    ax.set_title(
        f"4. final map {fw}x{fh}{capped} + newline column\n"
        f"total = {t.base} base + {t.grid} grid + {t.newlines} newlines = {t.total}",
        fontsize=9,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def demo_image(h: int, w: int) -> Any:
    """A synthetic picture with a gradient and shapes (no files needed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), np.full_like(x, 140)], -1).astype(
        np.uint8
    )
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    d.ellipse([w * 0.1, h * 0.2, w * 0.35, h * 0.7], fill=(240, 240, 40))
    d.rectangle([w * 0.55, h * 0.15, w * 0.9, h * 0.5], fill=(30, 30, 200))
    d.polygon([(w * 0.5, h * 0.9), (w * 0.7, h * 0.55), (w * 0.9, h * 0.9)], fill=(200, 30, 30))
    return im


def render_example(
    path: str | Path, image_hw=(1080, 1920), visual: Any = None, geometry: EncoderGeometry | None = None
) -> Path:
    from vistune.config import VisualConfig

    geometry = geometry or EncoderGeometry(384, 14)
    visual = visual or VisualConfig()
    plan = plan_image(image_hw, visual, geometry)
    return render_plan(
        demo_image(*image_hw),
        plan,
        geometry,
        path,
        title=f"SigLIP-384 + OneVision defaults (grids 1x1..6x6, cap {visual.cap} {visual.max_tokens}, slack {visual.cap_slack})",
    )
