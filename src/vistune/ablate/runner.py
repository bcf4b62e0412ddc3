"""Run a sweep: train every cell (sharing identical stage prefixes), evaluate it, record it, report.

**Stage sharing.** A cell's recipe is a chain of stages. Stage *i* of a cell is identified by a hash of
everything its output depends on: the model config (incl. the visual representation), the seed and the
configs of stages 0..i (never paths of outputs). Each distinct stage runs once, as a single-stage
``vistune train`` run in ``OUT/nodes/<stage>-<hash>/`` starting from its parent node's output
(``init_from``); cells that share a prefix (e.g. one Stage-1 connector for every Stage-2 variant) share those
nodes. A finished node is never re-run; an unfinished one resumes from its last checkpoint (a crash loses at
most the steps since then); concurrent workers (Slurm array tasks) take a file lock per node.

**Evaluation.** Each cell is evaluated with the sweep's tasks, and again under every inference variant
(``visual.*`` overrides applied to the trained checkpoint), into ``OUT/cells/<cell>/eval/<variant>/``; the
eval runner's per-sample cache makes a re-run skip what finished.

**Records.** ``OUT/cells/<cell>/cell.json`` holds the cell's knobs, overrides, training wall time (sum over its
nodes, shared ones included — the cost of training that cell), tokens and visual tokens seen, estimated
FLOPs, peak memory, loss-spike count, final loss, the predicted visual tokens per image and every task
score per variant.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistune.ablate.sweep import Cell, SweepConfig, load_sweep
from vistune.config import ConfigError, dump_yaml
from vistune.config.train import RecipeConfig, load_recipe
from vistune.fsutil import atomic_write_json

NODE_DONE = "node.json"


@dataclass
class Node:
    """One stage of one or more cells."""

    key: str
    stage: str
    index: int
    parent: Node | None
    recipe: RecipeConfig  # single-stage recipe (init_from filled in at run time)

    def folder(self, out: Path) -> Path:
        return out / "nodes" / f"{self.index:02d}-{self.stage}-{self.key[:10]}"


@dataclass
class CellPlan:
    cell: Cell
    recipe: RecipeConfig
    nodes: list[Node]
    est: dict[str, Any] = field(default_factory=dict)


def _stage_key(recipe: RecipeConfig, upto: int) -> str:
    data = recipe.model_dump(mode="json")
    payload = {
        "model": data["model"],
        "seed": data["seed"],
        "stages": [
            {k: v for k, v in s.items() if k not in ("save_every", "keep_last")}
            for s in data["stages"][: upto + 1]
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def plan_sweep(sweep: SweepConfig, recipe_path: Path) -> tuple[list[CellPlan], dict[str, Node]]:
    nodes: dict[str, Node] = {}
    plans: list[CellPlan] = []
    for cell in sweep.cells():
        try:
            recipe = load_recipe(recipe_path, cell.overrides)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.label!r}: {exc}") from None
        chain: list[Node] = []
        parent = None
        for i, stage in enumerate(recipe.stages):
            key = _stage_key(recipe, i)
            if key not in nodes:
                single = recipe.model_copy(update={"stages": (stage,), "name": f"{recipe.name}/{stage.name}"})
                nodes[key] = Node(key, stage.name, i, parent, single)
            parent = nodes[key]
            chain.append(parent)
        plans.append(CellPlan(cell, recipe, chain))
    return plans, nodes


# ---------------------------------------------------------------------------------------------------- estimates
def estimate_cell(plan: CellPlan, max_samples: int = 200) -> dict[str, Any]:
    """Predicted visual tokens per image (the token-count function over the stage data's image sizes) and
    text tokens per sample, per stage; cheap (reads image headers only)."""
    from PIL import Image

    from vistune.data.mixture import Mixture
    from vistune.model.anyres import plan_image
    from vistune.model.lmm import model_geometry_from_config

    geometry, visual = model_geometry_from_config(plan.recipe.model)
    out: dict[str, Any] = {"stages": {}}
    total_tokens = 0.0
    for stage in plan.recipe.stages:
        v = visual.override(**stage.visual) if stage.visual else visual
        try:
            mix = Mixture.from_path(
                stage.data.path, image_folder=stage.data.image_folder, seed=plan.recipe.seed
            )
        except Exception as exc:  # dry-run must still print a plan when data is absent
            out["stages"][stage.name] = {"error": str(exc)}
            continue
        n = len(mix)
        step = max(1, n // max_samples)
        vis, images, text = [], 0, []
        for i in range(0, n, step):
            try:
                s = mix[i]
            except Exception:
                continue
            text.append(mix.length_hint(i) / 4.0)
            multi = len(s.images) > 1
            for p in s.images:
                try:
                    with Image.open(p) as im:
                        w, h = im.size
                except OSError:
                    continue
                vis.append(plan_image((h, w), v, geometry, multi).num_tokens)
                images += 1
        sampled = max(1, len(text))
        vt = sum(vis) / sampled
        tt = sum(text) / sampled
        epochs = (
            stage.epochs if stage.max_steps is None else stage.max_steps * stage.global_batch_size / max(n, 1)
        )
        out["stages"][stage.name] = {
            "samples": n,
            "visual_tokens_per_image": round(sum(vis) / max(1, len(vis)), 1),
            "visual_tokens_per_sample": round(vt, 1),
            "text_tokens_per_sample_est": round(tt, 1),
            "epochs": epochs,
        }
        total_tokens += (vt + tt) * n * epochs
    out["tokens_est"] = total_tokens
    return out


# ---------------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def node_lock(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def node_output(out: Path, node: Node) -> Path:
    return node.folder(out) / "stages" / node.stage / "model"


def run_node(
    out: Path, node: Node, launcher: str = "local", nproc: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Train one node (after its parent) unless it already finished; returns its record."""
    folder = node.folder(out)
    done = folder / NODE_DONE
    if done.is_file():
        return json.loads(done.read_text())
    parent_out = None
    if node.parent is not None:
        run_node(out, node.parent, launcher, nproc, progress)
        parent_out = node_output(out, node.parent)
    with node_lock(folder):
        if done.is_file():  # another worker finished it while we waited
            return json.loads(done.read_text())
        stage = node.recipe.stages[0]
        if parent_out is not None:
            stage = stage.model_copy(update={"init_from": str(parent_out)})
        recipe = node.recipe.model_copy(update={"stages": (stage,)})
        resume = (folder / "config.yaml").is_file()
        t0 = time.perf_counter()
        if launcher == "local":
            from vistune.train.loop import RunOptions, train

            summary = train(recipe, RunOptions(output=folder, resume=resume, progress=progress))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            rfile = folder.parent / f"{folder.name}.recipe.yaml"
            rfile.write_text(dump_yaml(recipe.model_dump(mode="json")))
            cmd = [*launch_prefix(launcher, nproc), "train", str(rfile), "--output", str(folder)]
            if resume:
                cmd.append("--resume")
            subprocess.run(cmd, check=True)
            summary = json.loads((folder / "summary.json").read_text())
        st = summary["stages"][node.stage]
        record = {
            "key": node.key,
            "stage": node.stage,
            "output": str(node_output(out, node)),
            "wall_time_s": st.get("wall_time_s") or (time.perf_counter() - t0),
            "tokens": st.get("tokens", 0),
            "visual_tokens": st.get("visual_tokens", 0),
            "samples": st.get("samples", 0),
            "flops": st.get("flops", 0.0),
            "final_loss": st.get("final_loss"),
            "spikes": len(st.get("spikes") or []),
            "peak_memory_gb": _peak_memory(folder),
            "skipped_samples": sum((st.get("skips") or {}).values()),
        }
        atomic_write_json(done, record)
        return record


def _peak_memory(folder: Path) -> float | None:
    from vistune.train.monitor import read_metrics

    f = folder / "metrics.jsonl"
    if not f.is_file():
        return None
    vals = [r.get("peak_mem_gb") for r in read_metrics(f)]
    vals = [v for v in vals if isinstance(v, int | float)]
    return max(vals) if vals else None


def launch_prefix(launcher: str, nproc: int) -> list[str]:
    if launcher == "torchrun":
        return ["torchrun", "--standalone", f"--nproc-per-node={nproc}", "-m", "vistune"]
    if launcher == "subprocess":
        return [sys.executable, "-m", "vistune"]
    raise ConfigError(f"--launcher {launcher!r}: use local, subprocess or torchrun")


def eval_cell(
    out: Path,
    sweep: SweepConfig,
    plan: CellPlan,
    launcher: str = "local",
    nproc: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the cell's final checkpoint under its own and every inference variant's visual settings."""
    model_dir = node_output(out, plan.nodes[-1])
    results: dict[str, Any] = {}
    variants = [("trained", {})] + [(v.label, v.visual_overrides()) for v in sweep.inference]
    for label, visual in variants:
        edir = out / "cells" / plan.cell.slug / "eval" / _slug(label)
        rfile = edir / "results.json"
        if rfile.is_file():
            res = json.loads(rfile.read_text())
            if set(sweep.eval.tasks) <= set(res.get("tasks", {})):
                results[label] = res
                continue
        t0 = time.perf_counter()
        if launcher == "local":
            from vistune import load_pretrained
            from vistune.eval.runner import EvalOptions, evaluate

            model, proc = load_pretrained(model_dir, visual_overrides=visual or None)
            res = evaluate(
                model,
                proc,
                sweep.eval.tasks,
                edir,
                EvalOptions(
                    data_dir=sweep.eval.data_dir,
                    limit=sweep.eval.limit,
                    batch_size=sweep.eval.batch_size,
                    max_new_tokens=sweep.eval.max_new_tokens,
                    progress=progress,
                ),
                model_name=f"{sweep.name}/{plan.cell.label}",
            )
        else:
            cmd = [
                *launch_prefix(launcher, nproc),
                "eval",
                "--model",
                str(model_dir),
                "--tasks",
                ",".join(sweep.eval.tasks),
                "--output",
                str(edir),
                "--batch-size",
                str(sweep.eval.batch_size),
            ]
            if sweep.eval.data_dir:
                cmd += ["--data-dir", sweep.eval.data_dir]
            if sweep.eval.limit:
                cmd += ["--limit", str(sweep.eval.limit)]
            if sweep.eval.max_new_tokens:
                cmd += ["--max-new-tokens", str(sweep.eval.max_new_tokens)]
            for k, v in visual.items():
                cmd += ["--set", f"visual.{k}={json.dumps(v)}"]
            subprocess.run(cmd, check=True)
            res = json.loads(rfile.read_text())
        res["eval_wall_s"] = time.perf_counter() - t0
        atomic_write_json(rfile, res)
        results[label] = res
    return results


def _geometry(plan: CellPlan) -> dict[str, int]:
    from vistune.model.lmm import model_geometry_from_config

    g, _ = model_geometry_from_config(plan.recipe.model)
    return {"image_size": g.image_size, "patch_size": g.patch_size, "cls_tokens": g.cls_tokens}


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def run_cell(
    out: Path,
    sweep: SweepConfig,
    plan: CellPlan,
    launcher: str = "local",
    nproc: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    cell_dir = out / "cells" / plan.cell.slug
    cell_dir.mkdir(parents=True, exist_ok=True)
    records = [run_node(out, n, launcher, nproc, progress) for n in plan.nodes]
    evals = eval_cell(out, sweep, plan, launcher, nproc, progress)
    record = {
        "label": plan.cell.label,
        "knobs": plan.cell.knobs,
        "overrides": plan.cell.overrides,
        "nodes": [r["key"][:10] for r in records],
        "train_wall_s": sum(r["wall_time_s"] for r in records),
        "tokens": sum(r["tokens"] for r in records),
        "visual_tokens": sum(r["visual_tokens"] for r in records),
        "samples": sum(r["samples"] for r in records),
        "flops": sum(r["flops"] for r in records),
        "peak_memory_gb": max((r["peak_memory_gb"] or 0.0) for r in records) or None,
        "spikes": sum(r["spikes"] for r in records),
        "final_loss": records[-1]["final_loss"],
        "skipped_samples": sum(r["skipped_samples"] for r in records),
        "visual": plan.recipe.model.visual.model_dump(mode="json"),
        "geometry": _geometry(plan),
        "estimate": plan.est,
        "eval": {
            label: {
                "eval_wall_s": res.get("eval_wall_s"),
                "tasks": {
                    t: {
                        k: r.get(k)
                        for k in ("primary", "primary_metric", "display", "avg_value", "n", "chance")
                    }
                    for t, r in res.get("tasks", {}).items()
                },
            }
            for label, res in evals.items()
        },
        "eval_dirs": {label: str(out / "cells" / plan.cell.slug / "eval" / _slug(label)) for label in evals},
        "train_dirs": [str(n.folder(out)) for n in plan.nodes],
    }
    atomic_write_json(cell_dir / "cell.json", record)
    return record


def run_sweep(
    sweep_path: str | Path,
    output: str | Path,
    *,
    overrides: list[str] | None = None,
    dry_run: bool = False,
    launcher: str = "local",
    nproc: int = 1,
    cell_index: int | None = None,
    progress: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    from rich.console import Console

    console = console or Console()
    sweep, recipe_path = load_sweep(sweep_path, overrides)
    out = Path(output)
    plans, nodes = plan_sweep(sweep, recipe_path)
    for p in plans:
        p.est = estimate_cell(p)
    if dry_run:
        print_plan(sweep, plans, nodes, out, console)
        return {"cells": len(plans), "nodes": len(nodes)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(dump_yaml(sweep.model_dump(mode="json")))
    selected = plans if cell_index is None else [plans[cell_index]]
    records = []
    for p in selected:
        console.rule(f"[bold]{sweep.name}[/bold]: cell {p.cell.label}")
        records.append(run_cell(out, sweep, p, launcher, nproc, progress))
    if cell_index is None or all((out / "cells" / p.cell.slug / "cell.json").is_file() for p in plans):
        from vistune.ablate.report import write_sweep_report

        write_sweep_report(out, console=console)
    return {"cells": len(records), "nodes": len(nodes), "output": str(out)}


def print_plan(
    sweep: SweepConfig, plans: list[CellPlan], nodes: dict[str, Node], out: Path, console: Any
) -> None:
    from rich.table import Table

    base_cost = plans[0].est.get("tokens_est") or 1.0
    t = Table(
        title=f"{sweep.name}: {len(plans)} cells, {len(nodes)} distinct stages ({sum(len(p.nodes) for p in plans)} without sharing)"
    )
    t.add_column("cell")
    for k in sweep.knob_names():
        t.add_column(k)
    t.add_column("stages (shared ones marked *)")
    t.add_column("vis. tok/image", justify="right")
    t.add_column("est. tokens", justify="right")
    t.add_column("rel. cost", justify="right")
    t.add_column("status")
    users: dict[str, int] = {}
    for p in plans:
        for n in p.nodes:
            users[n.key] = users.get(n.key, 0) + 1
    for p in plans:
        stages = ", ".join(f"{n.stage}{'*' if users[n.key] > 1 else ''}" for n in p.nodes)
        last = p.recipe.stages[-1].name
        vt = p.est["stages"].get(last, {}).get("visual_tokens_per_image", "?")
        tok = p.est.get("tokens_est") or 0.0
        done = (out / "cells" / p.cell.slug / "cell.json").is_file()
        t.add_row(
            p.cell.label,
            *(str(p.cell.knobs.get(k, "")) for k in sweep.knob_names()),
            stages,
            str(vt),
            f"{tok:,.0f}",
            f"{tok / base_cost:.2f}" if base_cost else "-",
            "done" if done else "todo",
        )
    console.print(t)
    if sweep.inference:
        console.print(f"inference variants per cell: {', '.join(v.label for v in sweep.inference)}")
    console.print(f"evaluation: {', '.join(sweep.eval.tasks)}")


def emit_slurm(
    sweep_path: str | Path,
    output: str | Path,
    *,
    overrides: list[str] | None = None,
    gpus: int = 1,
    partition: str | None = None,
    time_limit: str = "24:00:00",
) -> Path:
    """Write a Slurm job-array script: one cell per array task (cells sharing a stage wait on its lock)."""
    sweep, recipe_path = load_sweep(sweep_path, overrides)
    plans, _ = plan_sweep(sweep, recipe_path)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    sets = " ".join(f"--set {json.dumps(o)}" for o in overrides or [])
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=vistune-{_slug(sweep.name)}",
        f"#SBATCH --array=0-{len(plans) - 1}",
        f"#SBATCH --gpus-per-node={gpus}",
        "#SBATCH --nodes=1",
        f"#SBATCH --time={time_limit}",
        f"#SBATCH --output={out.resolve()}/slurm-%A_%a.log",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += [
        "set -euo pipefail",
        "# one cell per array task; cells that share a stage (e.g. Stage-1) wait for whoever trains it first",
        f'vistune ablate {Path(sweep_path).resolve()} --output {out.resolve()} --cell "$SLURM_ARRAY_TASK_ID" '
        f"--launcher torchrun --nproc-per-node {gpus} --no-progress {sets}".rstrip(),
        "# when every task has finished:  vistune ablate report " + str(out.resolve()),
    ]
    for i, p in enumerate(plans):
        lines.append(f"#   task {i}: {p.cell.label}")
    script = out / "slurm.sh"
    script.write_text("\n".join(lines) + "\n")
    os.chmod(script, 0o755)
    return script


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
