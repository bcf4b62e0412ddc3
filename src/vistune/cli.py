"""The one vistune CLI.

Commands live next to the code they drive: each area module ``vistune.<area>.cli`` exposes
``register(app)`` and adds its commands (train, eval, world, ablate, ...). This file owns only the app, the
shared option parsing and ``tokens``.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="vistune",
    help="Build, train, evaluate and ablate LLaVA-NeXT-style multimodal models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=max(100, Console().width))


@app.callback()
def _root() -> None:
    """vistune: the LLaVA-NeXT ablations toolkit."""


#: area modules that contribute commands; a missing module is skipped (its commands are simply absent)
AREA_MODULES = (
    "vistune.demo",
    "vistune.train.cli",
    "vistune.eval.cli",
    "vistune.data.synthetic.cli",
    "vistune.ablate.cli",
    "vistune.model.interop.cli",
    "vistune.data.cli",
)


def parse_set(items: list[str] | None, section: str | None = None) -> dict[str, Any]:
    """``["visual.cap=total", ...]`` -> nested dict; with ``section``, keys must start with it."""
    from vistune.config import apply_overrides

    data = apply_overrides({}, items or [])
    if section is not None:
        extra = [k for k in data if k != section]
        if extra:
            raise typer.BadParameter(f"only {section}.KEY=VALUE overrides are allowed here, got {extra}")
        return data.get(section, {})
    return data


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise typer.BadParameter(f"--image {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080")
    w, h = int(m.group(1)), int(m.group(2))
    return h, w


@app.command()
def tokens(
    model: Annotated[
        str, typer.Option(help="checkpoint folder, HF llava folder or preset (e.g. tiny)")
    ] = "tiny",
    image: Annotated[list[str], typer.Option(help="image size WIDTHxHEIGHT (repeatable)")] = None,  # type: ignore[assignment]
    set_: Annotated[list[str], typer.Option("--set", help="visual.KEY=VALUE override (repeatable)")] = None,  # type: ignore[assignment]
    single_view: Annotated[bool, typer.Option(help="plan as one view of a multi-image sample")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    plot: Annotated[
        str | None, typer.Option(help="write a PNG drawing of the first image's plan here")
    ] = None,
) -> None:
    """Show the AnyRes plan of an image: chosen grid, crops, tokens per part and total."""
    from vistune.config import ConfigError
    from vistune.model.anyres import GeometryError, check_visual_config, plan_image
    from vistune.model.lmm import model_geometry

    sizes = [_parse_size(s) for s in (image or ["1920x1080"])]
    geometry, visual = model_geometry(model)
    overrides = parse_set(set_, "visual")
    try:
        if overrides:
            visual = visual.override(**overrides)
        check_visual_config(visual, geometry)
    except (GeometryError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    plans = [plan_image(hw, visual, geometry, single_view) for hw in sizes]
    if plot:
        from vistune.model.visualize import demo_image, render_plan

        if plans[0].single_view:
            raise typer.BadParameter("--plot draws AnyRes plans; drop --single-view or visual.anyres=false")
        render_plan(demo_image(*sizes[0]), plans[0], geometry, plot, title=f"{model}: {visual.cap} cap")
        console.print(f"plot written to {plot}")
    if as_json:
        print(
            json.dumps(
                {
                    "model": model,
                    "visual": visual.model_dump(mode="json"),
                    "images": [p.as_dict() for p in plans],
                },
                indent=2,
            )
        )
        return
    table = Table(
        title=f"AnyRes plan — {model} (view {geometry.image_size}px, {geometry.tokens_per_side}² tokens/view)"
    )
    for col in ("image", "grid", "canvas", "views", "base", "grid", "newline", "uncapped", "total"):
        table.add_column(col, justify="right")
    for p in plans:
        t = p.tokens
        table.add_row(
            f"{p.image_hw[1]}x{p.image_hw[0]}",
            "single" if p.single_view else f"{p.grid[0]}x{p.grid[1]}",
            f"{p.canvas_hw[1]}x{p.canvas_hw[0]}",
            str(t.views),
            str(t.base),
            str(t.grid),
            str(t.newlines),
            str(t.grid_before_cap) if t.grid_before_cap != t.grid else "-",
            f"[bold]{t.total}[/bold]",
        )
    console.print(table)


def _register_areas() -> None:
    for name in AREA_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or (exc.name and name.startswith(exc.name + ".")):
                continue
            raise
        reg = getattr(mod, "register", None)
        if reg is not None:
            reg(app)


def main(argv: list[str] | None = None) -> None:
    _register_areas()
    from vistune.config import ConfigError

    try:
        app(args=argv, standalone_mode=True)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
