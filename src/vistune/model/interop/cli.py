"""``vistune convert``: vistune checkpoints/presets <-> Hugging Face ``llava_onevision`` / ``llava_next`` folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

TARGETS = ("hf", "vistune")


def register(app: typer.Typer) -> None:
    @app.command()
    def convert(
        src: Annotated[
            str, typer.Argument(help="source: vistune checkpoint, preset name or HF llava folder")
        ],
        dst: Annotated[Path, typer.Argument(help="destination folder (written atomically)")],
        to: Annotated[str, typer.Option("--to", help="target format: hf | vistune")],
        format_: Annotated[
            str, typer.Option("--format", help="HF format for --to hf: llava_onevision | llava_next")
        ] = "llava_onevision",
        set_: Annotated[
            list[str], typer.Option("--set", help="visual.KEY=VALUE override applied before converting")
        ] = None,  # type: ignore[assignment]
        dtype: Annotated[
            str | None, typer.Option(help="float32 | bfloat16 | float16 (default: the source's)")
        ] = None,
    ) -> None:
        """Convert a model: ``--to hf`` writes a transformers folder, ``--to vistune`` imports one.

        ``--to hf`` refuses (listing every offending field) visual settings transformers cannot express.
        ``--to vistune`` reads an HF ``llava_onevision``/``llava_next`` folder and writes a vistune checkpoint.
        """
        from vistune import load_pretrained
        from vistune.cli import parse_set
        from vistune.model.interop.hf import HF_FORMATS, export_hf, import_hf, read_hf_folder

        if to not in TARGETS:
            raise typer.BadParameter(f"--to {to!r}: choose one of {', '.join(TARGETS)}")
        if format_ not in HF_FORMATS:
            raise typer.BadParameter(f"--format {format_!r}: choose one of {', '.join(HF_FORMATS)}")
        overrides = parse_set(set_, "visual") or None
        if to == "hf":
            model, processor = load_pretrained(src, visual_overrides=overrides, dtype=dtype)
            out = export_hf(model, processor, dst, format=format_)
            console.print(
                f"wrote {format_} folder [bold]{out}[/bold] (load it with transformers' from_pretrained)"
            )
            return
        folder = read_hf_folder(src)  # clear error when src is not an HF llava folder
        model, processor = import_hf(folder.path, visual_overrides=overrides, dtype=dtype)
        out = model.save_pretrained(dst, processor=processor, metadata={"converted_from": str(folder.path)})
        console.print(
            f"wrote vistune checkpoint [bold]{out}[/bold] from {folder.format} folder {folder.path}"
        )
