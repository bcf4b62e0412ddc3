"""``vistune demo``: the whole recipe, end to end, on a laptop CPU in about three minutes.

One command with no arguments:

1. **world** — writes the procedural world (:func:`vistune.data.synthetic.write_world`): Stage-1 captions,
   Stage-1.5 detailed re-captions + documents + charts, Stage-2 instructions, and the held-out eval splits;
2. **train** — runs the real trainer (:func:`vistune.train.loop.train`) on the demo recipe
   (``recipes/demo.yaml`` = :data:`DEMO_RECIPE`): Stage-1 trains the connector (+ newline) on captions,
   Stage-1.5 the full model on detailed captions and documents, Stage-2 the full model on instructions,
   starting from the world's pretrained tiny backbones (``world-s``: a SigLIP tower pretrained with dense
   per-patch heads, a Qwen2 LM pretrained on the world's text, and the connector distilled between them)
   with AnyRes;
3. **eval** — evaluates every ``synth_*`` task with the real eval runner (:func:`vistune.eval.runner.evaluate`);
4. **report** — prints the study-style table with a chance column and the bar each task must clear
   (``chance + max(0.2, (1 - chance) / 2)``, or 0.9), the loss-plot path and the total time, and writes
   ``results.json`` (``{"tasks": {name: {"score", "chance", "target", "passed", ...}}, ...}``).

``--output DIR`` keeps everything (world, stage checkpoints, metrics, eval samples). Without it the run goes
to a temporary folder and only the small results (table, plots, ``results.json``) are kept there.
``--quick`` is the CI-sized version (a smaller world, fewer steps, fewer eval samples; it checks the
plumbing, not the scores). Runs are deterministic for a given seed and thread count.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def _world_data(mixture: str) -> dict[str, str]:
    return {"path": f"${{VISTUNE_WORLD}}/{mixture}.yaml", "image_folder": "${VISTUNE_WORLD}"}


#: Stage-1.5 and Stage-2 train the full model (vision at 1/10 of the LLM's rate, as in the study). The rates
#: are fine-tuning rates: the model starts from a pretrained connector (the world's ``mm_projector``, see
#: :mod:`vistune.data.synthetic.align`), and higher ones (Stage-1 1e-2, LLM 2e-4) erased its alignment —
#: reading fell from nTED 0.34 to 0.03 (docs/demo.md)
_FULL_MODEL: dict[str, Any] = {
    "trainable": ["connector", "newline", "llm", "vision"],
    "epochs": 1,
    "global_batch_size": 16,
    "micro_batch_size": 16,
}

#: the demo recipe (``recipes/demo.yaml`` holds the same, with ``model: world-s``); ``${VISTUNE_WORLD}`` is
#: the world folder the demo writes
DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "description": "world-s (pretrained tiny SigLIP + Qwen2), AnyRes, Stage-1 -> Stage-1.5 -> Stage-2 on the world",
    "seed": 0,
    "model": "world-s",
    "defaults": {
        "precision": "fp32",
        "max_length": 512,
        "warmup_ratio": 0.05,
        "max_grad_norm": 1.0,
        "chat_template": "chatml_nosys",
        "spike": {"window": 20, "min_history": 8, "threshold": 8.0},
    },
    "logging": {"log_every": 1},
    "stages": [
        {
            "name": "stage1",
            "data": _world_data("stage1"),
            "trainable": ["connector", "newline"],
            "lr": {"default": 1.0e-4},
            "epochs": 1,
            "global_batch_size": 16,
            "micro_batch_size": 16,
            "chat_template": "plain",
            "save_weights": "all",
        },
        {
            "name": "stage15",
            "data": _world_data("stage15"),
            "lr": {"connector": 2.0e-4, "newline": 2.0e-4, "llm": 5.0e-5, "vision": 5.0e-6},
            **_FULL_MODEL,
        },
        {
            "name": "stage2",
            "data": _world_data("stage2"),
            "lr": {"connector": 1.0e-4, "newline": 1.0e-4, "llm": 2.0e-5, "vision": 2.0e-6},
            **_FULL_MODEL,
        },
    ],
}

#: world sizes of the full demo and of ``--quick``
DEMO_WORLD_SIZES: dict[str, int] = {
    "stage1_alt": 2400,
    "stage1_web": 0,
    "stage15_recap": 480,
    "stage15_docs": 640,
    "stage15_charts": 160,
    "stage2_instruct": 2400,
    "eval": 100,
}
QUICK_WORLD_SIZES: dict[str, int] = {
    "stage1_alt": 32,
    "stage1_web": 0,
    "stage15_recap": 16,
    "stage15_docs": 16,
    "stage15_charts": 16,
    "stage2_instruct": 32,
    "eval": 8,
}

#: eval batch size (left-padded batched greedy decoding)
EVAL_BATCH = 50


def target_score(chance: float) -> float:
    """The bar a task must clear: ``chance + max(0.2, (1 - chance) / 2)``, capped at 0.9."""
    return min(0.9, chance + max(0.2, (1.0 - chance) / 2.0))


def demo_recipe(world: str | Path, model: dict[str, Any] | None = None, quick: bool = False, seed: int = 0):
    """The validated :class:`~vistune.config.train.RecipeConfig` of the demo for a world folder.

    ``model`` replaces the ``world-s`` preset (default: :func:`world_model_config` of the shipped
    backbones). ``quick`` caps every stage at 3 optimizer steps of 4 samples.
    """
    from vistune.config.train import recipe_from_dict
    from vistune.data.synthetic.backbones import world_model_preset

    data = copy.deepcopy(DEMO_RECIPE)
    data["seed"] = seed
    data["model"] = model if model is not None else world_model_preset("world-s")
    overrides: list[str] = []
    if quick:
        overrides += [
            "stages.*.max_steps=3",
            "stages.*.global_batch_size=4",
            "stages.*.micro_batch_size=4",
        ]
    return recipe_from_dict(data, overrides, env={**os.environ, "VISTUNE_WORLD": str(Path(world).resolve())})


def _plot_stages(metrics_file: Path, out: Path, stage_names: list[str]) -> Path | None:
    """One figure with a loss curve per stage (from the trainer's ``metrics.jsonl``)."""
    import math

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    recs = []
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not recs:
        return None
    fig, axes = plt.subplots(1, len(stage_names), figsize=(4 * len(stage_names), 3.2), dpi=100, squeeze=False)
    for ax, name in zip(axes[0], stage_names, strict=True):
        rs = [
            r
            for r in recs
            if r.get("stage") == name and r.get("loss") is not None and math.isfinite(r["loss"])
        ]
        ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], lw=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss per supervised token")
    fig.suptitle("vistune demo — training loss per stage")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _table(tasks: dict[str, Any], title: str):
    from rich.table import Table

    from vistune.data.synthetic.world import EVAL_TASKS

    table = Table(title=title)
    for col, just in (
        ("task", "left"),
        ("mirrors", "left"),
        ("metric", "left"),
        ("score", "right"),
        ("chance", "right"),
        ("target", "right"),
        ("", "center"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, t in tasks.items():
        spec = EVAL_TASKS.get(name)
        table.add_row(
            name,
            spec.mirrors if spec else "",
            t.get("metric", ""),
            f"{100 * t['score']:.1f}",
            f"{100 * t['chance']:.1f}",
            f"{100 * t['target']:.1f}",
            "[green]✓[/green]" if t["passed"] else "[red]✗[/red]",
        )
    return table


def markdown_table(tasks: dict[str, Any]) -> str:
    """The demo's table as Markdown (scores in %, as in the study)."""
    from vistune.data.synthetic.world import EVAL_TASKS

    lines = [
        "| Task | Mirrors | Metric | Score | Chance | Target | |",
        "|---|---|---|---:|---:|---:|:-:|",
    ]
    for name, t in tasks.items():
        spec = EVAL_TASKS.get(name)
        lines.append(
            f"| {name} | {spec.mirrors if spec else ''} | {t.get('metric', '')} | {100 * t['score']:.1f} | "
            f"{100 * t['chance']:.1f} | {100 * t['target']:.1f} | {'✓' if t['passed'] else '✗'} |"
        )
    return "\n".join(lines) + "\n"


def run_demo(
    output: str | Path | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
    overwrite: bool = False,
    backbones: str | Path | None = None,
    model: str = "world-s",
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo; return the ``results.json`` payload (see the module docstring).

    ``model`` is a world model preset (``world-s``; ``world-m`` and ``world-s-vit64`` for the LLM-size and
    vision-encoder ablations); ``backbones`` a folder of backbones other than the shipped ones.
    """
    import torch
    from rich.console import Console

    from vistune.data.synthetic import WorldConfig, write_world
    from vistune.data.synthetic.backbones import WORLD_MODELS, world_model_preset
    from vistune.data.synthetic.world import EVAL_TASKS
    from vistune.eval.runner import EvalOptions, evaluate
    from vistune.model.lmm import load_pretrained
    from vistune.train.checkpoint import stage_output_dir
    from vistune.train.loop import RunOptions, train

    console = console or Console()
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    keep = output is not None
    out = Path(output) if keep else Path(tempfile.mkdtemp(prefix="vistune-demo-"))
    if keep and out.exists() and any(out.iterdir()):
        if not overwrite:
            raise typer.BadParameter(f"--output {out} is not empty; use a new folder or pass --overwrite")
        if not (out / "demo.json").is_file():
            raise typer.BadParameter(
                f"refusing to overwrite {out}: it does not hold a vistune demo (no demo.json)"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({"quick": quick, "seed": seed, "threads": threads}) + "\n")
    times: dict[str, float] = {}

    # 1. world -------------------------------------------------------------------------------------------
    t = time.perf_counter()
    sizes = QUICK_WORLD_SIZES if quick else DEMO_WORLD_SIZES
    cfg = WorldConfig(sizes=sizes)
    world = out / "world"
    console.print(f"[bold]1/3 world[/bold] → {world}")
    with console.status("writing the synthetic world") as status:
        write_world(world, cfg, seed=seed, progress=lambda msg: status.update(f"world: {msg}"))
    times["world"] = time.perf_counter() - t

    # 2. train -------------------------------------------------------------------------------------------
    t = time.perf_counter()
    if model not in WORLD_MODELS:
        raise typer.BadParameter(f"--model {model!r}: known world models are {', '.join(WORLD_MODELS)}")
    model_cfg = world_model_preset(model, root=backbones)
    recipe = demo_recipe(world, model_cfg, quick=quick, seed=seed)
    run_dir = out / "run"
    names = [s.name for s in recipe.stages]
    console.print(f"[bold]2/3 train[/bold] {' → '.join(names)} on {model} → {run_dir}")
    summary = train(recipe, RunOptions(output=run_dir, progress=progress))
    times["train"] = time.perf_counter() - t

    # 3. eval --------------------------------------------------------------------------------------------
    t = time.perf_counter()
    console.print(f"[bold]3/3 eval[/bold] {len(EVAL_TASKS)} synthetic tasks")
    final = stage_output_dir(run_dir, names[-1])
    lmm, processor = load_pretrained(final)
    eval_dir = out / "eval"
    raw = evaluate(
        lmm,
        processor,
        list(EVAL_TASKS),
        eval_dir,
        EvalOptions(data_dir=str(world), batch_size=EVAL_BATCH, progress=progress),
        model_name=f"demo/{model}",
    )
    times["eval"] = time.perf_counter() - t

    # 4. report ------------------------------------------------------------------------------------------
    manifest = json.loads((world / "world.json").read_text(encoding="utf-8"))
    tasks: dict[str, Any] = {}
    for name, res in raw["tasks"].items():
        chance = float(manifest["tasks"][name]["chance"])
        score = float(res["primary"])
        tgt = target_score(chance)
        tasks[name] = {
            "score": round(score, 4),
            "chance": round(chance, 4),
            "target": round(tgt, 4),
            "passed": score >= tgt,
            "metric": res.get("primary_metric"),
            "n": res.get("n"),
            "mirrors": EVAL_TASKS[name].mirrors,
            "majority": manifest["tasks"][name].get("majority"),
        }
    plot = _plot_stages(run_dir / "metrics.jsonl", out / "loss.png", names)
    times["total"] = time.perf_counter() - t_start
    payload = {
        "demo_version": 1,
        "quick": quick,
        "seed": seed,
        "threads": torch.get_num_threads(),
        "model": model,
        "recipe": recipe.model_dump(mode="json"),
        "world_fingerprint": manifest.get("fingerprint"),
        "stages": {
            n: {
                "steps": s.get("steps"),
                "samples": s.get("samples"),
                "first_loss": s.get("first_loss"),
                "final_loss": s.get("final_loss"),
                "wall_time_s": s.get("wall_time_s"),
                "plot": s.get("plot"),
            }
            for n, s in summary.get("stages", {}).items()
        },
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "loss_plot": str(plot) if plot else None,
        "tasks": tasks,
        "passed": sum(t["passed"] for t in tasks.values()),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(tasks), encoding="utf-8")
    if not keep:
        for heavy in ("world", "run", "eval"):
            shutil.rmtree(out / heavy, ignore_errors=True)
        payload["loss_plot"] = str(out / "loss.png") if plot else None
    console.print(
        _table(
            tasks,
            f"vistune demo — {model}, {'quick' if quick else 'full'} ({payload['passed']}/{len(tasks)} above target)",
        )
    )
    console.print(f"loss plot: {payload['loss_plot']}")
    console.print(
        "time: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in times.items() if k != "total")
        + f" — total [bold]{times['total']:.0f}s[/bold]"
    )
    console.print(
        f"results: {out / 'results.json'}"
        + ("" if keep else " (temporary; pass --output DIR to keep everything)")
    )
    return payload


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="keep everything here (world, checkpoints, results)"),
        ] = None,
        quick: Annotated[
            bool, typer.Option("--quick", help="CI-sized run: plumbing only, scores not meaningful")
        ] = False,
        seed: Annotated[int, typer.Option(help="world and training seed")] = 0,
        threads: Annotated[
            int, typer.Option(help="torch CPU threads (fixed, so that reruns give identical numbers)")
        ] = 1,
        model: Annotated[
            str, typer.Option(help="world model: world-s (default), world-m (larger LLM), world-s-vit64")
        ] = "world-s",
        overwrite: Annotated[bool, typer.Option(help="replace a previous demo in --output")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bars")] = False,
    ) -> None:
        """Build the world, train Stage-1 → 1.5 → 2 on the pretrained tiny backbones, evaluate every task."""
        from vistune.train.cli import _setup_logging

        _setup_logging(0)
        run_demo(
            output,
            quick=quick,
            seed=seed,
            threads=threads,
            model=model,
            progress=not no_progress,
            overwrite=overwrite,
        )


__all__ = ["DEMO_RECIPE", "demo_recipe", "markdown_table", "register", "run_demo", "target_score"]
