"""``vistune world`` commands: write the synthetic world to disk, render its gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    world_app = typer.Typer(
        help="The procedural synthetic world that stands in for the study's data and benchmarks."
    )

    @world_app.command("make")
    def make(
        output: Annotated[Path, typer.Option(help="world folder to write")],
        seed: Annotated[int, typer.Option(help="world seed")] = 0,
        set_: Annotated[
            list[str], typer.Option("--set", help="WorldConfig KEY=VALUE (e.g. sizes.stage2_instruct=2000)")
        ] = None,  # type: ignore[assignment]
        overwrite: Annotated[bool, typer.Option(help="replace an existing world folder")] = False,
    ) -> None:
        """Write LLaVA JSONL files + images per stage, YAML mixtures and the eval splits."""
        from rich.console import Console

        from vistune.cli import parse_set
        from vistune.config import validate
        from vistune.data.synthetic import WorldConfig, write_world

        cfg = validate(WorldConfig, parse_set(set_), prefix="world.")
        manifest = write_world(output, cfg, seed=seed, overwrite=overwrite)
        c = Console()
        c.print(f"world written to {output}")
        for name, info in manifest["tasks"].items():
            c.print(
                f"  eval {name:15s} {info['n']:5d} rows  metric {info['metric']:16s} chance {info['chance']:.3f}"
            )

    @world_app.command("gallery")
    def gallery(
        output: Annotated[Path, typer.Argument(help="PNG to write")],
        seed: Annotated[int, typer.Option(help="world seed")] = 0,
    ) -> None:
        """Render a contact sheet with example images of every task family."""
        from vistune.data.synthetic import render_gallery

        render_gallery(output, seed=seed)
        typer.echo(f"gallery written to {output}")

    app.add_typer(world_app, name="world")
