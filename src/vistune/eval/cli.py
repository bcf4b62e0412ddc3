"""``vistune eval`` commands: run tasks, re-score saved predictions, combine results into a table, list tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _init_distributed() -> None:
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(
        help="Evaluate on the study's benchmark suite (lmms-eval semantics) and synthetic tasks."
    )

    @eval_app.callback(invoke_without_command=True)
    def run(
        ctx: typer.Context,
        model: Annotated[
            str | None, typer.Option(help="checkpoint folder, HF llava folder or preset")
        ] = None,
        tasks: Annotated[
            str | None, typer.Option(help="comma-separated task names (see `vistune eval list`)")
        ] = None,
        output: Annotated[Path | None, typer.Option(help="results folder")] = None,
        data_dir: Annotated[
            str | None, typer.Option(help="folder holding one sub-folder per dataset")
        ] = None,
        limit: Annotated[
            int | None, typer.Option(help="first N documents per task (MME pairs kept whole)")
        ] = None,
        batch_size: Annotated[int, typer.Option(help="prompts per generate call")] = 8,
        max_new_tokens: Annotated[
            int | None, typer.Option(help="override every task's generation length")
        ] = None,
        set_: Annotated[
            list[str], typer.Option("--set", help="visual.KEY=VALUE inference-time override")
        ] = None,  # type: ignore[assignment]
        device: Annotated[
            str | None, typer.Option(help="cpu | cuda | cuda:N (default: cuda if available)")
        ] = None,
        dtype: Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")] = None,
        judge_model: Annotated[str | None, typer.Option(help="judge model name for LLM-judged tasks")] = None,
        judge_base_url: Annotated[
            str | None, typer.Option(help="OpenAI-compatible base URL for the judge")
        ] = None,
        judge_concurrency: Annotated[int, typer.Option(help="parallel judge requests")] = 8,
    ) -> None:
        """Run tasks: vistune eval --model PATH --tasks a,b --output DIR."""
        if ctx.invoked_subcommand is not None:
            return
        if not (model and tasks and output):
            raise typer.BadParameter(
                "give --model, --tasks and --output (or a subcommand: score, table, list)"
            )
        import torch

        from vistune import load_pretrained
        from vistune.cli import parse_set
        from vistune.eval.runner import EvalOptions, evaluate

        _init_distributed()
        overrides = parse_set(set_, "visual")
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dev == "cuda" and torch.distributed.is_initialized():
            dev = f"cuda:{torch.cuda.current_device()}"
        m, proc = load_pretrained(model, visual_overrides=overrides or None, device=dev, dtype=dtype)
        judge = None
        if judge_model or judge_base_url:
            from vistune.eval.judge import JudgeClient

            judge = JudgeClient(
                model=judge_model,
                base_url=judge_base_url,
                cache_dir=output / "judge_cache",
                max_concurrency=judge_concurrency,
            )
        names = [t.strip() for t in tasks.split(",") if t.strip()]
        res = evaluate(
            m,
            proc,
            names,
            output,
            EvalOptions(
                data_dir=data_dir,
                limit=limit,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                judge=judge,
            ),
            model_name=model,
        )
        if res:
            _print_results(res)
            console.print(f"results: {output / 'results.json'}")

    @eval_app.command("score")
    def score(
        samples_file: Annotated[Path, typer.Argument(help="a samples/<task>.jsonl written by vistune eval")],
        task: Annotated[str | None, typer.Option(help="task name (default: from the file name)")] = None,
        data_dir: Annotated[
            str | None, typer.Option(help="dataset root (judged tasks that show images)")
        ] = None,
        judge_model: Annotated[str | None, typer.Option(help="judge model (LLM-judged tasks)")] = None,
        judge_base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL")] = None,
        judge_cache: Annotated[Path | None, typer.Option(help="judge cache folder (re-use a run's)")] = None,
    ) -> None:
        """Re-score saved predictions with the current metric code (rule-based tasks: no model, no dataset)."""
        from vistune.eval.runner import rescore

        judge = None
        if judge_model or judge_base_url or judge_cache:
            from vistune.eval.judge import JudgeClient

            judge = JudgeClient(model=judge_model, base_url=judge_base_url, cache_dir=judge_cache)
        res = rescore(samples_file, task, judge=judge, data_dir=data_dir)
        console.print_json(json.dumps(res["metrics"]))

    @eval_app.command("table")
    def table(
        results: Annotated[
            list[Path], typer.Argument(help="results.json files or result folders (one row each)")
        ],
        output: Annotated[Path, typer.Option(help="folder for table.md / table.csv / table.json")] = Path(
            "."
        ),
        tasks: Annotated[str | None, typer.Option(help="comma-separated task columns (default: all)")] = None,
        labels: Annotated[str | None, typer.Option(help="comma-separated row labels")] = None,
    ) -> None:
        """Combine result folders into one study-style table (Markdown, CSV, JSON)."""
        from vistune.eval.report import write_report

        t = write_report(
            results,
            output,
            tasks=tasks.split(",") if tasks else None,
            labels=labels.split(",") if labels else None,
        )
        console.print(t.to_markdown())
        console.print(f"written to {output}/table.md, .csv, .json")

    @eval_app.command("list")
    def list_() -> None:
        """List the registered tasks."""
        from vistune.eval.task import get_task, list_tasks

        table = Table(title="evaluation tasks")
        for col in ("task", "split", "metric", "judged", "chance"):
            table.add_column(col)
        for name in list_tasks():
            t = get_task(name)
            table.add_row(
                name,
                t.split,
                t.primary_metric,
                "yes" if t.judged else "",
                "" if t.chance is None else f"{t.chance:.3g}",
            )
        console.print(table)

    app.add_typer(eval_app, name="eval")


def _print_results(res: dict) -> None:
    from vistune.eval.runner import fmt_score

    table = Table(title="results")
    for col in ("task", "metric", "score", "n"):
        table.add_column(col)
    for name, r in res["tasks"].items():
        table.add_row(name, r["primary_metric"], fmt_score(r["primary"]), str(r["n"]))
    console.print(table)
