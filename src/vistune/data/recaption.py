"""Re-captioning (the study's Stage-1.5 "ReCap" data) and web-data quality filtering.

**Re-captioning.** A captioner model (any vistune/HF llava checkpoint) describes every image with the study's
prompt "Please generate detailed descriptions of the given image." (greedy, up to 1024 new tokens, as the
reference's SGLang script), batched with left padding. Output is written as it goes, one JSON line per image::

    {"id": ..., "image": "relative/path.jpg", "caption": "...", "conversations": [
        {"from": "human", "value": "<image>\\nPlease generate detailed descriptions of the given image."},
        {"from": "gpt", "value": "..."}]}

so the file is directly a LLaVA training set. Runs are sharded (``--shard i --num-shards n``: every n-th image)
and resumable (images already in the output are skipped; a crash loses at most one batch). Unreadable images
are skipped and counted, never fatal.

**Quality filtering.** Keep the best rows of a web-scale caption set by a numeric field (e.g. a CLIP score or
the synthetic world's ``quality``): the top fraction/count, or everything above a threshold; ties are broken by
row order so the result is deterministic.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECAP_PROMPT = "Please generate detailed descriptions of the given image."
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class RecapStats:
    written: int = 0
    skipped_existing: int = 0
    skipped_bad: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "skipped_existing": self.skipped_existing,
            "skipped_bad": self.skipped_bad,
        }


def iter_images(
    source: str | Path, image_folder: str | Path | None = None
) -> Iterator[tuple[str, Path, str]]:
    """``(id, absolute path, path as recorded)`` for a folder of images or a LLaVA JSON/JSONL/YAML mixture."""
    source = Path(source)
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                rel = p.relative_to(source).as_posix()
                yield rel, p, rel
        return
    from vistune.data.mixture import Mixture

    mix = Mixture.from_path(source, image_folder=image_folder)
    seen: set[str] = set()
    base = Path(image_folder) if image_folder else source.parent
    for i in range(len(mix)):
        images = mix.raw(i).get("image")
        if images is None:
            continue
        for rel in [images] if isinstance(images, str) else list(images):
            if rel in seen:
                continue
            seen.add(rel)
            p = Path(rel) if Path(rel).is_absolute() else base / rel
            yield rel, p, rel


def _done_ids(path: Path) -> set[str]:
    done: set[str] = set()
    if path.exists():
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a crash: that image runs again
    return done


def recaption(
    model: Any,
    processor: Any,
    source: str | Path,
    output: str | Path,
    *,
    image_folder: str | Path | None = None,
    prompt: str = RECAP_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    shard: int = 0,
    num_shards: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> RecapStats:
    from vistune.data.images import ImageError, load_image
    from vistune.eval.runner import generate_batch
    from vistune.eval.task import GenerationSettings

    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} must be in 0..{num_shards - 1}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(output)
    stats = RecapStats()
    todo: list[tuple[str, Path, str]] = []
    for k, item in enumerate(iter_images(source, image_folder)):
        if limit is not None and k >= limit:
            break
        if k % num_shards != shard:
            continue
        if item[0] in done:
            stats.skipped_existing += 1
            continue
        todo.append(item)
    gen = GenerationSettings(max_new_tokens=max_new_tokens)
    model.eval()
    bar = None
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("[bold]recaption[/bold]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        bar.start()
        tid = bar.add_task("recaption", total=len(todo))
    import torch

    try:
        with output.open("a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                chunk = []
                for ident, path, rel in todo[start : start + batch_size]:
                    try:
                        chunk.append((ident, rel, load_image(path, source=str(path))))
                    except ImageError as exc:
                        stats.skipped_bad[exc.reason] = stats.skipped_bad.get(exc.reason, 0) + 1
                if chunk:
                    messages = [
                        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
                    ] * len(chunk)
                    with torch.no_grad():
                        _, preds, _ = generate_batch(
                            model, processor, messages, [[im] for _, _, im in chunk], gen, max_new_tokens
                        )
                    for (ident, rel, _), caption in zip(chunk, preds, strict=True):
                        row = {
                            "id": ident,
                            "image": rel,
                            "caption": caption,
                            "conversations": [
                                {"from": "human", "value": f"<image>\n{prompt}"},
                                {"from": "gpt", "value": caption},
                            ],
                        }
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        stats.written += 1
                    f.flush()
                    os.fsync(f.fileno())
                if bar is not None:
                    bar.update(tid, advance=len(todo[start : start + batch_size]))
    finally:
        if bar is not None:
            bar.stop()
    return stats


def filter_by_quality(
    source: str | Path,
    output: str | Path,
    *,
    field_name: str = "quality",
    top: float | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Keep the best rows of a JSON/JSONL file by ``field_name``: ``top`` (a fraction in (0, 1] or a count
    > 1) and/or ``threshold`` (keep rows >= it). Rows lacking the field are an error naming the row."""
    from vistune.data.mixture import Mixture
    from vistune.fsutil import atomic_write_text

    if top is None and threshold is None:
        raise ValueError("give --top (fraction or count) and/or --threshold")
    mix = Mixture.from_path(source)
    rows = []
    for i in range(len(mix)):
        row = mix.raw(i)
        if field_name not in row or not isinstance(row[field_name], int | float):
            raise ValueError(f"{source}: row {i}: field {field_name!r} missing or not a number")
        rows.append((float(row[field_name]), i, row))
    kept = [r for r in rows if threshold is None or r[0] >= threshold]
    if top is not None:
        n = int(round(top * len(rows))) if top <= 1 else int(top)
        kept = sorted(kept, key=lambda r: (-r[0], r[1]))[:n]
    kept.sort(key=lambda r: r[1])
    atomic_write_text(output, "".join(json.dumps(r[2], ensure_ascii=False) + "\n" for r in kept))
    scores = [r[0] for r in kept]
    return {
        "rows": len(rows),
        "kept": len(kept),
        "mean_kept": sum(scores) / len(scores) if scores else None,
        "mean_all": sum(r[0] for r in rows) / len(rows) if rows else None,
    }
