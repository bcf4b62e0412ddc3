"""``vistune train``: run a recipe (all stages, or one), resumable, on one process or under torchrun."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table


def setup_logging(rank: int) -> None:
    """Rich console logging for ``vistune.*``: INFO on rank 0, warnings only on the other ranks."""
    from rich.logging import RichHandler

    logger = logging.getLogger("vistune")
    if any(isinstance(h, RichHandler) for h in logger.handlers):
        return
    handler = RichHandler(show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """The short human-readable end-of-run summary."""
    console = console or Console()
    table = Table(title=f"vistune train — {summary.get('recipe')} -> {summary.get('output')}")
    for col in ("stage", "steps", "samples", "loss first→final", "spikes", "non-finite", "skipped", "time"):
        table.add_column(col, justify="right")
    for name, st in summary.get("stages", {}).items():
        first, final = st.get("first_loss"), st.get("final_loss")
        loss = f"{first:.4f} → {final:.4f}" if first is not None and final is not None else "-"
        table.add_row(
            name,
            str(st.get("steps")),
            str(st.get("samples")),
            loss,
            str(len(st.get("spikes", []))),
            str(len(st.get("nonfinite_steps", []))),
            str(sum(st.get("skips", {}).values())),
            f"{st.get('wall_time_s', 0):.0f}s",
        )
    console.print(table)
    skips = summary.get("skips") or {}
    if skips:
        console.print("skipped samples by reason: " + ", ".join(f"{k}={v}" for k, v in skips.items()))
    events = summary.get("data_events") or {}
    if events:
        console.print("data events: " + ", ".join(f"{k}={v}" for k, v in events.items()))


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        recipe: Annotated[Path, typer.Argument(help="recipe YAML (e.g. recipes/tiny.yaml)")],
        output: Annotated[Path, typer.Option("--output", "-o", help="run folder")],
        set_: Annotated[
            list[str] | None,
            typer.Option("--set", help="recipe override KEY=VALUE, e.g. stages.sft.lr.llm=1e-5 (repeatable)"),
        ] = None,
        stage: Annotated[str | None, typer.Option(help="run only this stage")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue the run in --output")] = False,
        max_steps: Annotated[
            int | None, typer.Option(help="at most N optimizer steps per stage (the LR schedule spans them)")
        ] = None,
        save_every: Annotated[int | None, typer.Option(help="resume checkpoint every N steps")] = None,
        strict: Annotated[bool, typer.Option("--strict", help="fail on the first bad sample")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
        print_config: Annotated[bool, typer.Option(help="print the resolved recipe and exit")] = False,
    ) -> None:
        """Train a recipe: its stages in order, each starting from the previous stage's output."""
        from vistune.config import dump_yaml
        from vistune.config.train import load_recipe
        from vistune.train.loop import RunOptions, train

        rank = int(os.environ.get("RANK", "0"))
        setup_logging(rank)
        cfg = load_recipe(recipe, set_ or [])
        if stage is not None:
            cfg.stage(stage)
        if print_config:
            typer.echo(dump_yaml(cfg))
            return
        options = RunOptions(
            output=output,
            stage=stage,
            resume=resume,
            max_steps=max_steps,
            save_every=save_every,
            strict=True if strict else None,
            progress=False if no_progress else None,
        )
        from vistune.train.dataset import BadSampleError
        from vistune.train.loop import TrainingAborted

        try:
            summary = train(cfg, options)
        except (TrainingAborted, BadSampleError) as exc:
            Console(stderr=True).print(f"[red]training stopped:[/red] {exc}")
            raise typer.Exit(1) from None
        if rank == 0:
            print_summary(summary)


_setup_logging = setup_logging  # the name vistune.demo imports

__all__ = ["print_summary", "register", "setup_logging"]
