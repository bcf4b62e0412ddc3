"""A small procedurally generated LLaVA-format dataset for the tiny recipe, tests and smoke runs.

``write_toy_dataset(root)`` writes Pillow images (coloured shapes of varied sizes and aspect ratios) and two
JSONL files in the LLaVA conversation format:

* ``align.jsonl`` — Stage-1 captions: ``<image>`` + "A red circle on a white background." style replies;
* ``instruct.jsonl`` — Stage-2 instructions: questions about colour/shape/position, some multi-turn,
  some text-only rows and some multi-image rows.

The answers are a function of the picture, so a model that learns to look gets a lower loss. With
``bad_rows=True`` four broken rows are appended to ``instruct.jsonl`` (a missing image, a corrupt image
file, a malformed row, a text-only row whose single exchange is ~6000 tokens long), one of each, for
skip-counting tests. Usage: ``python -m vistune.train.toydata DIR [N]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 40, 170),
    "black": (15, 15, 15),
}
SHAPES = ("square", "circle", "triangle", "bar")
SIZES_HW = ((32, 32), (48, 96), (96, 48), (64, 64), (40, 120), (120, 40), (80, 60))


def _draw(shape: str, color: tuple[int, int, int], hw: tuple[int, int], where: str) -> Image.Image:
    h, w = hw
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    side = max(6, min(h, w) // 2)
    cx = {"left": w // 4, "center": w // 2, "right": 3 * w // 4}[where]
    cy = h // 2
    box = (cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2)
    if shape == "square":
        d.rectangle(box, fill=color)
    elif shape == "circle":
        d.ellipse(box, fill=color)
    elif shape == "triangle":
        d.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=color)
    else:
        d.rectangle((box[0], cy - side // 6, box[2], cy + side // 6), fill=color)
    return im


def write_toy_dataset(
    root: str | Path, n: int = 48, seed: int = 0, bad_rows: bool = False
) -> dict[str, Path]:
    """Write ``n`` images and the two JSONL files under ``root``; returns their paths."""
    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    facts = []
    for i in range(n):
        color = names[int(rng.integers(len(names)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        where = ("left", "center", "right")[int(rng.integers(3))]
        hw = SIZES_HW[int(rng.integers(len(SIZES_HW)))]
        rel = f"images/{i:04d}.png"
        _draw(shape, COLORS[color], hw, where).save(root / rel)
        facts.append((rel, color, shape, where))

    align = []
    for i, (rel, color, shape, where) in enumerate(facts):
        align.append(
            {
                "id": f"cap-{i}",
                "image": rel,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image briefly."},
                    {"from": "gpt", "value": f"A {color} {shape} on the {where} of a white background."},
                ],
            }
        )
    instruct = []
    for i, (rel, color, shape, where) in enumerate(facts):
        kind = i % 6
        if kind == 4:
            instruct.append(
                {
                    "id": f"txt-{i}",
                    "conversations": [
                        {"from": "human", "value": f"Name a shape that is not a {shape}."},
                        {"from": "gpt", "value": "circle" if shape != "circle" else "square"},
                    ],
                }
            )
            continue
        if kind == 5:
            other = facts[(i + 1) % len(facts)]
            instruct.append(
                {
                    "id": f"multi-{i}",
                    "image": [rel, other[0]],
                    "conversations": [
                        {"from": "human", "value": "First: <image> Second: <image> Which colours are they?"},
                        {"from": "gpt", "value": f"The first is {color}, the second is {other[1]}."},
                    ],
                }
            )
            continue
        turns = [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": color},
        ]
        if kind in (1, 3):
            turns += [{"from": "human", "value": "And which shape is it?"}, {"from": "gpt", "value": shape}]
        if kind == 3:
            turns += [
                {"from": "human", "value": "Where is it?"},
                {"from": "gpt", "value": f"On the {where}."},
            ]
        instruct.append({"id": f"qa-{i}", "image": rel, "conversations": turns})

    if bad_rows:
        (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
        q = {"from": "human", "value": "<image>\nWhat colour is the shape?"}
        a = {"from": "gpt", "value": "red"}
        instruct += [
            {"id": "bad-missing", "image": "images/missing.png", "conversations": [q, a]},
            {"id": "bad-corrupt", "image": "images/corrupt.png", "conversations": [q, a]},
            {
                "id": "bad-malformed",
                "image": facts[0][0],
                "conversations": [{"from": "robot", "value": "hi"}],
            },
            {
                "id": "bad-too-long",
                "conversations": [
                    {"from": "human", "value": "count: " + " ".join(str(k) for k in range(3000))},
                    {"from": "gpt", "value": "done"},
                ],
            },
        ]

    paths = {
        "root": root,
        "images": img_dir,
        "align": root / "align.jsonl",
        "instruct": root / "instruct.jsonl",
    }
    for key, rows in (("align", align), ("instruct", instruct)):
        with open(paths[key], "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return paths


if __name__ == "__main__":  # pragma: no cover - convenience entry point
    out = write_toy_dataset(sys.argv[1], n=int(sys.argv[2]) if len(sys.argv) > 2 else 48)
    print(f"wrote {out['align']} and {out['instruct']}")
