"""The sweep report: study-layout tables (Markdown / CSV / JSON) and plots (PNG).

``table.*``      one row per cell: knob columns, training time, tokens seen, visual tokens per image (predicted
                 by the token-count function and measured in training), ``Avg.`` and every task with its split.
``inference.*``  (when the sweep has inference variants) one row per (cell, variant): the study's
                 "Training | Inference" table with the total inference time.
``score_vs_time.png``      every task's score against the cell's training time.
``loss_curves.png``        every cell's loss over its stages, spikes marked.
``tokens_per_image.png``   visual tokens per image against image size for every visual setting of the sweep.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from vistune.fsutil import atomic_write_json, atomic_write_text


def _load_cells(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import yaml

    from vistune.ablate.sweep import SweepConfig

    sweep_raw = yaml.safe_load((out / "sweep.yaml").read_text())
    sweep = SweepConfig.model_validate(sweep_raw)
    cells = []
    for c in sweep.cells():
        f = out / "cells" / c.slug / "cell.json"
        if f.is_file():
            cells.append(json.loads(f.read_text()))
    return sweep_raw, cells


def _fmt_time(sec: float | None) -> str:
    if sec is None or not math.isfinite(sec):
        return ""
    if sec < 120:
        return f"{sec:.0f}s"
    m, s = divmod(int(round(sec)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _fmt_num(x: Any, decimals: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, int) or (isinstance(x, float) and abs(x) >= 1e5):
        return f"{x:,.0f}"
    return f"{x:.{decimals}f}"


def _run_results(cells: list[dict[str, Any]], variant: str) -> list[Any]:
    from vistune.eval.report import load_results

    return [
        load_results(Path(c["eval_dirs"][variant]) / "results.json")
        for c in cells
        if variant in c["eval_dirs"]
    ]


def build_tables(out: Path) -> dict[str, Any]:
    from vistune.eval.report import build_table

    sweep, cells = _load_cells(out)
    if not cells:
        raise FileNotFoundError(f"{out}: no finished cells (cells/*/cell.json)")
    knobs = []
    for c in cells:
        knobs += [k for k in c["knobs"] if k not in knobs]
    tasks = sweep["eval"]["tasks"]
    avg_tasks = sweep["eval"].get("avg_tasks")
    main = build_table(
        _run_results(cells, "trained"), tasks=tasks, avg_tasks=avg_tasks, labels=[c["label"] for c in cells]
    )
    header = [
        "Run",
        *knobs,
        "Training Time",
        "#Tokens seen",
        "Vis. tok/image (pred.)",
        "Vis. tok/sample (train)",
        "Spikes",
        "Final loss",
        "Avg.",
    ]
    splits = ["" for _ in header[:-1]] + ["-"]
    cols = [(col.name, col.split or "-") for col in main.columns]
    rows = []
    for c, row in zip(cells, main.rows, strict=True):
        last = list(c["estimate"].get("stages", {}).values())[-1] if c["estimate"].get("stages") else {}
        rows.append(
            {
                "label": c["label"],
                "knobs": c["knobs"],
                "train_wall_s": c["train_wall_s"],
                "tokens": c["tokens"],
                "visual_tokens_per_image_pred": last.get("visual_tokens_per_image"),
                "visual_tokens_per_sample_train": (c["visual_tokens"] / c["samples"])
                if c["samples"]
                else None,
                "spikes": c["spikes"],
                "final_loss": c["final_loss"],
                "avg": row.avg,
                "values": row.values,
                "cells": [
                    c["label"],
                    *(str(c["knobs"].get(k, "")) for k in knobs),
                    _fmt_time(c["train_wall_s"]),
                    _fmt_num(c["tokens"]),
                    _fmt_num(last.get("visual_tokens_per_image")),
                    _fmt_num((c["visual_tokens"] / c["samples"]) if c["samples"] else None),
                    str(c["spikes"]),
                    _fmt_num(c["final_loss"], 3),
                    _fmt_num(row.avg),
                    *(_fmt_num(row.values.get(col.task)) for col in main.columns),
                ],
            }
        )
    result = {
        "name": sweep["name"],
        "header": header + [n for n, _ in cols],
        "splits": splits + [s for _, s in cols],
        "rows": rows,
        "notes": main.notes,
        "tasks": tasks,
    }
    inference = None
    variants = [v["label"] for v in sweep.get("inference") or []]
    if variants:
        irows = []
        for c in cells:
            for v in ["trained", *variants]:
                if v not in c["eval_dirs"]:
                    continue
                (res,) = _run_results([c], v)
                t = build_table([res], tasks=tasks, avg_tasks=avg_tasks, labels=[f"{c['label']} @ {v}"])
                r = t.rows[0]
                wall = c["eval"].get(v, {}).get("eval_wall_s")
                irows.append(
                    {
                        "label": r.label,
                        "cells": [
                            c["label"],
                            *(str(c["knobs"].get(k, "")) for k in knobs),
                            "as trained" if v == "trained" else v,
                            _fmt_time(wall),
                            _fmt_num(r.avg),
                            *(_fmt_num(r.values.get(col.task)) for col in t.columns),
                        ],
                        "avg": r.avg,
                        "values": r.values,
                        "eval_wall_s": wall,
                    }
                )
        inference = {
            "header": ["Run", *knobs, "Inference", "Total Inference Time", "Avg.", *(n for n, _ in cols)],
            "splits": ["" for _ in knobs] + ["", "", "", "-"] + [s for _, s in cols],
            "rows": irows,
        }
    result["inference"] = inference
    return result


def _markdown(header: list[str], splits: list[str], rows: list[dict[str, Any]], notes: list[str] = ()) -> str:
    esc = [h.replace("|", "\\|") for h in header]
    lines = ["| " + " | ".join(esc) + " |", "|" + "---|" * len(header), "| " + " | ".join(splits) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r["cells"]) + " |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r["cells"])
    return buf.getvalue()


def write_sweep_report(output: str | Path, console: Any = None) -> dict[str, Path]:
    out = Path(output)
    t = build_tables(out)
    paths = {
        "table.md": out / "table.md",
        "table.csv": out / "table.csv",
        "table.json": out / "table.json",
    }
    atomic_write_text(
        paths["table.md"], f"# {t['name']}\n\n" + _markdown(t["header"], t["splits"], t["rows"], t["notes"])
    )
    atomic_write_text(paths["table.csv"], _csv(t["header"], t["rows"]))
    atomic_write_json(paths["table.json"], t)
    if t["inference"]:
        inf = t["inference"]
        paths["inference.md"] = out / "inference.md"
        paths["inference.csv"] = out / "inference.csv"
        atomic_write_text(
            paths["inference.md"],
            f"# {t['name']}: inference variants\n\n" + _markdown(inf["header"], inf["splits"], inf["rows"]),
        )
        atomic_write_text(paths["inference.csv"], _csv(inf["header"], inf["rows"]))
    paths.update(write_plots(out))
    if console is not None:
        console.print(_markdown(t["header"], t["splits"], t["rows"]))
        if t["inference"]:
            console.print(
                _markdown(t["inference"]["header"], t["inference"]["splits"], t["inference"]["rows"])
            )
        console.print(f"report written to {out}: " + ", ".join(p.name for p in paths.values()))
    return paths


# ---------------------------------------------------------------------------------------------------- plots
def write_plots(out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, cells = _load_cells(out)
    t = build_tables(out)
    paths: dict[str, Path] = {}

    # 1. score vs training time, one panel per task
    tasks = t["tasks"]
    n = len(tasks)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for i, task in enumerate(tasks):
        ax = axes[i // cols][i % cols]
        for r in t["rows"]:
            y = r["values"].get(task)
            if y is None:
                continue
            ax.scatter(r["train_wall_s"], y, s=30)
            ax.annotate(
                r["label"], (r["train_wall_s"], y), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training time (s)", fontsize=8)
        ax.set_ylabel("score", fontsize=8)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{t['name']}: score vs training time")
    fig.tight_layout()
    p = out / "score_vs_time.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["score_vs_time.png"] = p

    # 2. loss curves (stages concatenated), spikes marked
    from vistune.train.monitor import read_metrics

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for c in cells:
        xs, ys, sx, sy = [], [], [], []
        offset = 0
        for d in c["train_dirs"]:
            f = Path(d) / "metrics.jsonl"
            if not f.is_file():
                continue
            recs = [r for r in read_metrics(f) if isinstance(r.get("loss"), int | float)]
            for r in recs:
                xs.append(offset + r["step"])
                ys.append(r["loss"])
                if r.get("spike"):
                    sx.append(offset + r["step"])
                    sy.append(r["loss"])
            offset += max((r["step"] for r in recs), default=0)
        if xs:
            line = ax.plot(xs, ys, lw=1, label=c["label"])[0]
            if sx:
                ax.scatter(sx, sy, marker="x", s=40, color=line.get_color(), zorder=3)
    ax.set_xlabel("optimizer step (stages concatenated)")
    ax.set_ylabel("loss")
    ax.set_title(f"{t['name']}: loss curves (x = spike)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = out / "loss_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["loss_curves.png"] = p

    # 3. tokens per image vs image size for every visual setting
    from vistune.ablate.sweep import SweepConfig
    from vistune.config import VisualConfig
    from vistune.model.anyres import EncoderGeometry, plan_image

    sw = SweepConfig.model_validate(sweep)
    sizes = []
    for s in sw.plot_image_sizes:
        w, h = (int(x) for x in s.lower().split("x"))
        sizes.append((h, w))
    settings: dict[str, VisualConfig] = {}
    for c in cells:
        settings.setdefault(c["label"], VisualConfig.model_validate(c["visual"]))
        for label, d in c["eval_dirs"].items():
            if label == "trained":
                continue
            res = json.loads((Path(d) / "results.json").read_text())
            settings.setdefault(f"infer {label}", VisualConfig.model_validate(res["visual"]))
    g = cells[0].get("geometry")
    geometry = EncoderGeometry(g["image_size"], g["patch_size"], g.get("cls_tokens", 0)) if g else None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if geometry is not None:
        xs = range(len(sizes))
        for label, v in settings.items():
            ax.plot(
                xs, [plan_image(hw, v, geometry).num_tokens for hw in sizes], marker="o", lw=1, label=label
            )
        ax.set_xticks(list(xs), [f"{w}x{h}" for h, w in sizes], fontsize=8)
    ax.set_xlabel("image size (W x H)")
    ax.set_ylabel("visual tokens per image")
    ax.set_title(f"{t['name']}: visual tokens per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = out / "tokens_per_image.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths["tokens_per_image.png"] = p
    return paths
