"""Write the synthetic world to disk as ordinary LLaVA data, and render a contact sheet.

Layout of a world folder (all image paths in every JSONL are relative to this folder, the
``image_folder`` of every mixture; mixture ``json_path`` entries are relative to the YAML's folder)::

    world.json                      manifest: config, seed, files, mixtures, tasks (metric, chance), fingerprint
    stage1_alt.jsonl                Stage-1 short captions
    stage1_web.jsonl                Stage-1 noisy web pool (``quality``, ``caption_correct``, ``noise``)
    stage1_web_top.jsonl            top ``web_select`` fraction of the pool by quality
    stage1_web_random.jsonl         a random subset of the pool of the same size
    stage15_recap.jsonl             Stage-1.5 detailed re-captions
    stage15_docs.jsonl              Stage-1.5 document transcription
    stage15_charts.jsonl            Stage-1.5 chart data
    stage2_instruct.jsonl           Stage-2 instruction mixture (multi-turn, some text-only rows)
    stage1.yaml stage1_web.yaml stage1_web_top.yaml stage1_web_random.yaml stage15.yaml stage2.yaml
    images/<file>/<index>.png
    eval/<task>.jsonl               one file per eval task (``question``, ``answer``, ``metric``, ``meta``)
    eval/images/<task>/<index>.png

Writing is atomic: everything goes to a temporary sibling folder that is renamed at the end. The
manifest's ``fingerprint`` hashes every row and every image's raw pixels (not the PNG bytes, which depend
on the zlib build), so two machines can compare worlds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from vistune.data.synthetic.base import WorldSample
from vistune.data.synthetic.config import PALETTE, WorldConfig
from vistune.data.synthetic.font import draw_text, get_font, legibility
from vistune.data.synthetic.world import EVAL_TASKS, baselines, generate

FORMAT = "vistune-synthetic-world"
FORMAT_VERSION = 1

#: Training files: stem -> (family, stage, description).
STAGE_FILES: dict[str, tuple[str, str, str]] = {
    "stage1_alt": ("alt", "stage1", "short alt-text captions"),
    "stage1_web": ("web", "stage1", "noisy web captions with a per-sample quality score"),
    "stage15_recap": ("recap", "stage1.5", "detailed re-captions"),
    "stage15_docs": ("transcribe", "stage1.5", "document transcription"),
    "stage15_charts": ("chart_data", "stage1.5", "chart to data"),
    "stage2_instruct": ("instruct", "stage2", "mixed instruction data"),
}

#: Mixture YAMLs (LLaVA-NeXT format): name -> JSONL stems.
MIXTURES: dict[str, tuple[str, ...]] = {
    "stage1": ("stage1_alt",),
    "stage1_web": ("stage1_web",),
    "stage1_web_top": ("stage1_web_top",),
    "stage1_web_random": ("stage1_web_random",),
    "stage15": ("stage15_recap", "stage15_docs", "stage15_charts"),
    "stage2": ("stage2_instruct",),
}


class _Hasher:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def row(self, path: str, row: dict[str, Any]) -> None:
        self._h.update(path.encode() + b"\0" + json.dumps(row, sort_keys=True).encode() + b"\n")

    def image(self, path: str, im: Image.Image) -> None:
        self._h.update(f"{path}\0{im.mode}\0{im.size}\0".encode() + im.tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _save_png(im: Image.Image, path: Path) -> None:
    im.save(path, format="PNG", compress_level=6)


def _write_samples(
    root: Path,
    jsonl_rel: str,
    image_dir_rel: str,
    samples: list[WorldSample],
    hasher: _Hasher,
    row_fn: Callable[[WorldSample, list[str]], dict[str, Any]],
) -> list[dict[str, Any]]:
    (root / image_dir_rel).mkdir(parents=True, exist_ok=True)
    rows = []
    for idx, s in enumerate(samples):
        paths = []
        for k, im in enumerate(s.images):
            suffix = "" if len(s.images) == 1 else f"_{k}"
            rel = f"{image_dir_rel}/{idx:06d}{suffix}.png"
            _save_png(im, root / rel)
            hasher.image(rel, im)
            paths.append(rel)
        rows.append(row_fn(s, paths))
    _write_jsonl(root / jsonl_rel, rows, jsonl_rel, hasher)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]], rel: str, hasher: _Hasher) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            hasher.row(rel, row)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _train_row(s: WorldSample, paths: list[str]) -> dict[str, Any]:
    row = s.to_row(paths)
    meta = s.turns[0].meta
    if s.family == "web":
        row["quality"] = meta["quality"]
        row["caption_correct"] = meta["caption_correct"]
        row["noise"] = meta["noise"]
    return row


def _web_subsets(rows: list[dict[str, Any]], cfg: WorldConfig, seed: int) -> tuple[list, list]:
    """Top-quality and random subsets of equal size ``round(web_select * n)`` (order of the pool kept)."""
    k = round(cfg.web_select * len(rows))
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["quality"], i))
    top = sorted(order[:k])
    rand = sorted(random.Random(f"vistune-world/v1/{seed}/web-random").sample(range(len(rows)), k))
    return [rows[i] for i in top], [rows[i] for i in rand]


def write_world(
    output_dir: str | Path,
    cfg: WorldConfig | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate the whole world into ``output_dir`` and return the manifest (also saved as ``world.json``).

    Refuses to touch a non-empty folder unless ``overwrite`` is set, and even then only a folder that holds
    a ``world.json`` (never an arbitrary directory).
    """
    cfg = cfg or WorldConfig()
    out = Path(output_dir)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace an existing world")
            if not (out / "world.json").is_file():
                raise FileExistsError(
                    f"refusing to overwrite {out}: it is not a synthetic world (no world.json)"
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    say = progress or (lambda _msg: None)
    hasher = _Hasher()
    sizes = cfg.sizes
    files: dict[str, Any] = {}
    try:
        web_rows: list[dict[str, Any]] = []
        for stem, (family, stage, desc) in STAGE_FILES.items():
            n = getattr(sizes, stem)
            say(f"{stem}: {n} samples")
            samples = list(generate(family, "train", n, seed, cfg))
            rows = _write_samples(tmp, f"{stem}.jsonl", f"images/{stem}", samples, hasher, _train_row)
            files[stem] = {
                "path": f"{stem}.jsonl",
                "n": n,
                "family": family,
                "stage": stage,
                "description": desc,
            }
            if stem == "stage1_web":
                web_rows = rows
        top, rand = _web_subsets(web_rows, cfg, seed)
        for stem, rows, desc in (
            ("stage1_web_top", top, "top-quality subset of stage1_web"),
            ("stage1_web_random", rand, "random subset of stage1_web of the same size"),
        ):
            _write_jsonl(tmp / f"{stem}.jsonl", rows, f"{stem}.jsonl", hasher)
            quality = sum(r["quality"] for r in rows) / len(rows) if rows else 0.0
            correct = sum(r["caption_correct"] for r in rows) / len(rows) if rows else 0.0
            files[stem] = {
                "path": f"{stem}.jsonl",
                "n": len(rows),
                "family": "web",
                "stage": "stage1",
                "description": desc,
                "mean_quality": round(quality, 4),
                "correct_fraction": round(correct, 4),
            }
        mixtures = {}
        for name, stems in MIXTURES.items():
            doc = {"datasets": [{"json_path": f"{s}.jsonl", "sampling_strategy": "all"} for s in stems]}
            text = yaml.safe_dump(doc, sort_keys=False)
            (tmp / f"{name}.yaml").write_text(text, encoding="utf-8")
            hasher.row(f"{name}.yaml", doc)
            mixtures[name] = f"{name}.yaml"
        (tmp / "eval").mkdir()
        tasks: dict[str, Any] = {}
        for name, spec in EVAL_TASKS.items():
            say(f"eval/{name}: {sizes.eval} samples")
            samples = list(generate(spec.family, "eval", sizes.eval, seed, cfg))

            def row_fn(
                s: WorldSample, paths: list[str], _name: str = name, _metric: str = spec.metric
            ) -> dict:
                return s.to_row(paths, eval_task=_name, metric=_metric)

            _write_samples(tmp, f"eval/{name}.jsonl", f"eval/images/{name}", samples, hasher, row_fn)
            tasks[name] = {
                "path": f"eval/{name}.jsonl",
                "n": len(samples),
                "family": spec.family,
                "metric": spec.metric,
                "answer_type": spec.answer_type,
                "mirrors": spec.mirrors,
                "prompt_suffix": spec.prompt_suffix,
                "description": spec.description,
                **baselines(spec, samples),
            }
        crop = legibility(cfg.font, cfg.cell, 1.0, cfg.doc_charset)
        base = legibility(cfg.font, cfg.cell, cfg.doc_base_factor, cfg.doc_charset)
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "seed": seed,
            "image_folder": ".",
            "path_rule": "image paths are relative to the world folder; json_path relative to the YAML's folder",
            "config": cfg.model_dump(mode="json"),
            "geometry": {
                "tile": cfg.tile,
                "scene_size": list(cfg.scene_size),
                "doc_size": list(cfg.doc_size),
                "chart_size": list(cfg.chart_size),
                "text_cell": cfg.cell,
                "doc_base_factor": cfg.doc_base_factor,
                "glyph_confusable_fraction": {
                    "full_resolution": round(crop.confusable_fraction, 4),
                    "base_view": round(base.confusable_fraction, 4),
                },
            },
            "files": files,
            "mixtures": mixtures,
            "tasks": tasks,
            "fingerprint": hasher.hexdigest(),
        }
        (tmp / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# --------------------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------------------
_GALLERY_ROWS = ("color", "count", "exist", "spatial", "mcq", "caption", "docvqa", "chart")


def _label_lines(text: str, width_chars: int, charset: str) -> list[str]:
    clean = "".join(ch if ch in charset else " " for ch in text.upper().replace("\n", " "))
    return textwrap.wrap(clean, width_chars) or [""]


def render_gallery(
    path: str | Path, cfg: WorldConfig | None = None, seed: int = 0, per_family: int = 3, zoom: int = 2
) -> Path:
    """Render a PNG contact sheet: one row per family with example images and their question/answer.

    Documents additionally show their *base view* (squashed to one tile, then enlarged), which makes the
    resolution argument visible: the text that is crisp at full resolution is a blur there.
    """
    cfg = cfg or WorldConfig()
    font = get_font("5x7")
    cell = 8
    col_w = max(cfg.scene_size[1], cfg.doc_size[1], cfg.chart_size[1]) * zoom + 2 * cell
    img_h = max(cfg.scene_size[0], cfg.doc_size[0], cfg.chart_size[0]) * zoom
    text_lines = 6
    row_h = img_h + (text_lines + 1) * cell + cell
    label_w = 9 * cell
    columns = per_family + 1  # + base view for documents
    width = label_w + columns * col_w
    height = cell + len(_GALLERY_ROWS) * row_h
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)
    ink = PALETTE["black"]
    chars_per_line = (col_w - cell) // cell
    for r, family in enumerate(_GALLERY_ROWS):
        top = cell + r * row_h
        draw_text(pixels, family.upper()[:8], top, 0, cell, ink, font)
        samples = list(generate(family, "eval", per_family, seed, cfg))
        for c, s in enumerate(samples):
            left = label_w + c * col_w
            im = s.images[0]
            big = np.asarray(im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST))
            pixels[top : top + big.shape[0], left : left + big.shape[1]] = big
            pixels[top : top + big.shape[0], left + big.shape[1]] = 200  # separator
            question = s.turns[0].question.split("\n")[0]
            if s.turns[0].meta.get("options"):
                question += " " + " ".join(
                    f"{chr(65 + i)}.{o}" for i, o in enumerate(s.turns[0].meta["options"])
                )
            lines = _label_lines(f"Q: {question}", chars_per_line, font.charset)
            lines += _label_lines(f"A: {s.target}", chars_per_line, font.charset)
            for k, line in enumerate(lines[:text_lines]):
                draw_text(pixels, line, top + img_h + cell + k * cell, left, cell, ink, font)
        if family == "docvqa" and samples:
            left = label_w + per_family * col_w
            im = samples[0].images[0]
            base = im.resize((cfg.tile, cfg.tile), Image.Resampling.BICUBIC)
            big = np.asarray(base.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST))
            pixels[top : top + big.shape[0], left : left + big.shape[1]] = big
            draw_text(pixels, "BASE VIEW OF 1ST", top + img_h + cell, left, cell, ink, font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG")
    return out
