"""``vistune recaption`` and ``vistune data filter``: build the study's high-quality Stage-1.5 data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("recaption")
    def recaption_cmd(
        source: Annotated[Path, typer.Argument(help="an image folder or a LLaVA JSON/JSONL/YAML mixture")],
        output: Annotated[Path, typer.Option(help="JSONL to append captions to (resumable)")],
        model: Annotated[str, typer.Option(help="captioner: checkpoint, HF llava folder or preset")],
        image_folder: Annotated[
            str | None, typer.Option(help="folder that relative image paths join")
        ] = None,
        prompt: Annotated[str | None, typer.Option(help="default: the study's re-captioning prompt")] = None,
        batch_size: Annotated[int, typer.Option()] = 8,
        max_new_tokens: Annotated[int, typer.Option()] = 1024,
        shard: Annotated[int, typer.Option(help="this worker's shard (0-based)")] = 0,
        num_shards: Annotated[int, typer.Option(help="number of workers")] = 1,
        limit: Annotated[int | None, typer.Option(help="first N images only")] = None,
        device: Annotated[str | None, typer.Option()] = None,
        dtype: Annotated[str | None, typer.Option()] = None,
    ) -> None:
        """Describe every image with a captioner model ("Please generate detailed descriptions of the given image.")."""
        import torch
        from rich.console import Console

        from vistune import load_pretrained
        from vistune.data.recaption import RECAP_PROMPT, recaption

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        m, proc = load_pretrained(model, device=dev, dtype=dtype)
        stats = recaption(
            m,
            proc,
            source,
            output,
            image_folder=image_folder,
            prompt=prompt or RECAP_PROMPT,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            shard=shard,
            num_shards=num_shards,
            limit=limit,
        )
        Console().print(stats.as_dict())

    data_app = typer.Typer(help="Data tools.")

    @data_app.command("filter")
    def filter_cmd(
        source: Annotated[Path, typer.Argument(help="LLaVA JSON/JSONL with a numeric quality field")],
        output: Annotated[Path, typer.Option(help="filtered JSONL")],
        field: Annotated[str, typer.Option(help="numeric field to rank by")] = "quality",
        top: Annotated[float | None, typer.Option(help="keep the best fraction (<=1) or count (>1)")] = None,
        threshold: Annotated[float | None, typer.Option(help="keep rows with field >= threshold")] = None,
    ) -> None:
        """Quality-filter web-scale caption data (the study's Top-Quality Stage-1 selection)."""
        from rich.console import Console

        from vistune.data.recaption import filter_by_quality

        Console().print(filter_by_quality(source, output, field_name=field, top=top, threshold=threshold))

    app.add_typer(data_app, name="data")
