"""``vistune ablate``: train and evaluate every cell of a sweep and render the study's tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("ablate")
    def ablate(
        sweep: Annotated[Path, typer.Argument(help="sweep YAML (see recipes/ablations/)")],
        output: Annotated[Path, typer.Option(help="sweep folder (cells, shared stages, report)")],
        set_: Annotated[
            list[str], typer.Option("--set", help="recipe KEY=VALUE applied to every cell")
        ] = None,  # type: ignore[assignment]
        dry_run: Annotated[
            bool, typer.Option(help="print the plan: cells, shared stages, visual tokens, cost")
        ] = False,
        launcher: Annotated[str, typer.Option(help="local | subprocess | torchrun")] = "local",
        nproc_per_node: Annotated[int, typer.Option(help="processes per cell with --launcher torchrun")] = 1,
        cell: Annotated[
            int | None, typer.Option(help="run only cell K (0-based; used by Slurm array tasks)")
        ] = None,
        emit: Annotated[
            str | None, typer.Option(help="'slurm': write a job-array script instead of running")
        ] = None,
        gpus: Annotated[int, typer.Option(help="GPUs per Slurm task (with --emit slurm)")] = 8,
        partition: Annotated[str | None, typer.Option(help="Slurm partition")] = None,
        report_only: Annotated[
            bool, typer.Option(help="re-render the tables and plots of finished cells")
        ] = False,
        progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    ) -> None:
        """Run a sweep: vistune ablate SWEEP.yaml --output DIR [--dry-run] [--launcher torchrun] [--emit slurm]."""
        from rich.console import Console

        from vistune.ablate.runner import emit_slurm, run_sweep

        console = Console()
        if report_only:
            from vistune.ablate.report import write_sweep_report

            write_sweep_report(output, console=console)
            return
        if emit is not None:
            if emit != "slurm":
                raise typer.BadParameter(f"--emit {emit!r}: only 'slurm' is supported")
            script = emit_slurm(sweep, output, overrides=set_, gpus=gpus, partition=partition)
            console.print(f"Slurm job-array script written to {script}; submit with: sbatch {script}")
            return
        run_sweep(
            sweep,
            output,
            overrides=set_,
            dry_run=dry_run,
            launcher=launcher,
            nproc=nproc_per_node,
            cell_index=cell,
            progress=progress,
            console=console,
        )
