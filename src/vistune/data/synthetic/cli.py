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

    @world_app.command("pretrain")
    def pretrain(
        output: Annotated[Path, typer.Option(help="folder for the backbones (one sub-folder each)")],
        seed: Annotated[int, typer.Option(help="pretraining seed")] = 0,
        only: Annotated[
            list[str] | None, typer.Option("--only", help="backbone name (repeatable; default: all)")
        ] = None,
        threads: Annotated[
            int, typer.Option(help="torch CPU threads per job (fixed for reproducibility)")
        ] = 1,
        jobs: Annotated[int, typer.Option(help="parallel processes (2: encoder+LM chains side by side)")] = 2,
        scale: Annotated[
            float, typer.Option(help="multiply every step count (e.g. 0.01 for a smoke run)")
        ] = 1.0,
    ) -> None:
        """Pretrain the world's tiny backbones (vision encoders and LMs) as Hugging Face folders (~1 h on 2 cores)."""
        from rich.console import Console

        from vistune.data.synthetic.pretrain import pretrain_backbones

        c = Console()
        m = pretrain_backbones(
            output, only, seed, progress=jobs == 1, threads=threads, scale=scale, log=c.print, jobs=jobs
        )
        for name, info in m["backbones"].items():
            c.print(
                f"{name}: {info['parameters'] / 1e6:.2f}M parameters, {info['wall_time_s']:.0f}s, {info['metrics']}"
            )
        c.print(f"backbones written to {output}; use them with VISTUNE_WORLD_BACKBONES={output}")

    app.add_typer(world_app, name="world")
