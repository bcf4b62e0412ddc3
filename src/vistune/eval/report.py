"""Results files and study-style tables.

**Results shape** (what ``vistune eval`` writes as ``results.json``; :class:`RunResults` /
:class:`TaskResult` read and write it)::

    {
      "results_version": 1,
      "model": "path/or/name",          # required (may be null)
      "run": "optional row label",
      "created": "2026-05-25T10:00:00", # ISO time; decides which file wins when two hold the same task
      "tasks": {
        "<task name>": {
          "metrics": {"<metric>": number, ...},   # required: Task.aggregate output
          "primary": number | null,               # required: metrics[primary_metric]
          "primary_metric": "...", "split": "...", "display_name": "...",
          "display": number | null,               # value shown in tables (study units)
          "avg_value": number | null,             # 0-100 value used for Avg.
          "n": int, "version": "...", ...         # any further keys are kept verbatim
        }
      },
      ...                                        # any further top-level keys are kept verbatim
    }

**Table rules** (as in the study): one column per task, the split under its name, rows = runs. Values are
percentages except where the study shows another unit: MathVista is already 0–100, SynDOG shows the summed
nTED (e.g. 425.7), MME is converted to accuracy ``(perception + cognition) / 2800 × 100``. ``Avg.`` is the
plain mean of the per-task percentages (SynDOG enters as mean nTED × 100) over all columns — or over
``avg_tasks`` — and is left empty for a run missing any of them. ``display``/``avg_value`` stored in a results
file win; otherwise they are computed from the registered task (its optional ``table_value(metrics)`` /
``avg_value(metrics)`` hooks, else ``primary × avg_scale``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistune.eval.task import Task

__all__ = [
    "RESULTS_VERSION",
    "STUDY_COLUMNS",
    "Column",
    "ResultsFormatError",
    "RunResults",
    "StudyTable",
    "TableRow",
    "TaskResult",
    "build_table",
    "load_results",
    "summarize_task",
    "write_report",
]

RESULTS_VERSION = 1

#: Column name and split label per task, in the study's column order (tasks not listed follow, sorted).
STUDY_COLUMNS: dict[str, tuple[str, str]] = {
    "ai2d": ("AI2D", "test"),
    "chartqa": ("ChartQA", "test"),
    "docvqa_val": ("DocVQA", "val"),
    "infovqa_val": ("InfoVQA", "val"),
    "mathvista_testmini": ("MathVista", "testmini"),
    "mme": ("MME", "-"),
    "mmmu_val": ("MMMU", "val"),
    "llava_in_the_wild": ("LLaVA-W", "-"),
    "scienceqa_img": ("ScienceQA", "IMG"),
    "dc100_en": ("Image-DC", "EN-100"),
    "dc200_cn": ("Image-DC", "CN-200"),
    "video_dc499": ("Video-DC", "-"),
    "synthdog_en": ("SynDOG", "EN/TED"),
    "ok_vqa_val2014": ("OK-VQA", "val"),
    "pope": ("POPE", "test/F1"),
    "vizwiz_vqa_val": ("VizWiz-VQA", "val"),
    "ocrbench": ("OCRBench", "test"),
    "cmmmu_val": ("CMMMU", "val"),
}

_NOTES = {
    "mme": "MME: (perception + cognition) / 2800 × 100, as throughout the study.",
    "synthdog_en": "SynDOG: sum of per-image nTED accuracies (0-500 on the full split); Avg. uses mean × 100.",
    "pope": "POPE: F1 × 100 over the pooled adversarial/popular/random sets.",
    "mathvista_testmini": "MathVista: accuracy (0-100) after rule-based extraction (see needs_judge counts).",
}


class ResultsFormatError(ValueError):
    """A results file does not have the documented shape."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise ResultsFormatError(f"{where}: {key!r} must be a number or null, got {value!r:.60}")
    return float(value)


@dataclass
class TaskResult:
    """One task's outcome in a results file (see the module docstring for the fields)."""

    metrics: dict[str, Any]
    primary: float | None
    primary_metric: str = ""
    split: str = ""
    display_name: str = ""
    display: float | None = None
    avg_value: float | None = None
    n: int | None = None
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    _FIELDS = (
        "metrics",
        "primary",
        "primary_metric",
        "split",
        "display_name",
        "display",
        "avg_value",
        "n",
        "version",
    )

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self._FIELDS}
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TaskResult:
        if not isinstance(data, Mapping):
            raise ResultsFormatError(f"{where}: expected an object, got {type(data).__name__}")
        metrics = data.get("metrics")
        if not isinstance(metrics, Mapping):
            raise ResultsFormatError(f"{where}: 'metrics' must be an object of metric -> number")
        if "primary" not in data:
            raise ResultsFormatError(f"{where}: missing 'primary' (the value of the task's primary metric)")
        n = data.get("n", data.get("n_samples"))
        if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
            raise ResultsFormatError(f"{where}: 'n' must be an integer, got {n!r}")
        return cls(
            metrics=dict(metrics),
            primary=_optional_number(data, "primary", where),
            primary_metric=str(data.get("primary_metric") or ""),
            split=str(data.get("split") or ""),
            display_name=str(data.get("display_name") or ""),
            display=_optional_number(data, "display", where),
            avg_value=_optional_number(data, "avg_value", where),
            n=n,
            version=str(data.get("version") or ""),
            extra={k: v for k, v in data.items() if k not in cls._FIELDS and k != "n_samples"},
        )


@dataclass
class RunResults:
    """All task results of one run (one table row). ``source`` is where it was read from (not serialised)."""

    model: str | None
    tasks: dict[str, TaskResult]
    run: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results_version": RESULTS_VERSION, "model": self.model}
        if self.run:
            out["run"] = self.run
        if self.created:
            out["created"] = self.created
        out.update({k: v for k, v in self.extra.items() if k not in ("tasks", "results_version")})
        out["tasks"] = {name: result.to_dict() for name, result in self.tasks.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "results") -> RunResults:
        if not isinstance(data, Mapping):
            raise ResultsFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("results_version", RESULTS_VERSION)
        if version != RESULTS_VERSION:
            raise ResultsFormatError(f"{where}: results_version {version!r} is not supported (expected 1)")
        if "model" not in data:
            raise ResultsFormatError(f"{where}: missing 'model'")
        model = data["model"]
        if model is not None and not isinstance(model, str):
            raise ResultsFormatError(f"{where}: 'model' must be a string or null")
        tasks = data.get("tasks")
        if not isinstance(tasks, Mapping):
            raise ResultsFormatError(f"{where}: 'tasks' must be an object of task name -> result")
        return cls(
            model=model,
            tasks={
                str(name): TaskResult.from_dict(res, f"{where}: task {name!r}") for name, res in tasks.items()
            },
            run=str(data.get("run") or ""),
            created=str(data.get("created") or ""),
            extra={
                k: v
                for k, v in data.items()
                if k not in ("model", "tasks", "run", "created", "results_version")
            },
        )

    def write(self, path: str | Path) -> Path:
        """Write atomically (temporary file + rename) as pretty JSON."""
        return _atomic_write(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    def merged(self, other: RunResults) -> RunResults:
        """Combine two results files of the same run; a task present in both keeps the later ``created``."""
        here, there = self.source or "first file", other.source or "second file"
        if self.model != other.model:
            raise ResultsFormatError(f"{there}: model {other.model!r} differs from {self.model!r} in {here}")
        tasks = dict(self.tasks)
        for name, result in other.tasks.items():
            if name in tasks:
                if not (self.created and other.created) or self.created == other.created:
                    raise ResultsFormatError(
                        f"task {name!r} appears in both {here} and {there} and their 'created' times do not say "
                        "which is newer; remove one"
                    )
                if other.created < self.created:
                    continue
            tasks[name] = result
        newest = max(self.created, other.created)
        return RunResults(
            model=self.model,
            tasks=tasks,
            run=self.run or other.run,
            created=newest,
            extra={**other.extra, **self.extra},
            source=self.source,
        )


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read_json(path: Path) -> RunResults:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(f"{path}: invalid JSON: {exc}") from exc
    result = RunResults.from_dict(data, str(path))
    result.source = path
    return result


def load_results(path: str | Path) -> RunResults:
    """Read a results file, or merge every ``*results*.json`` directly inside a folder (a run evaluated in
    several invocations). A folder's row label defaults to the folder name."""
    path = Path(path)
    if path.is_file():
        return _read_json(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such results file or folder")
    files = sorted(p for p in path.glob("*results*.json") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no results*.json file in this folder")
    merged = _read_json(files[0])
    for extra in files[1:]:
        merged = merged.merged(_read_json(extra))
    merged.source = path
    return merged


# ----------------------------------------------------------------------------------------------------------
# From task metrics to table values
# ----------------------------------------------------------------------------------------------------------


def _registered_task(name: str) -> Task | None:
    from vistune.eval.task import get_task

    try:
        return get_task(name)
    except KeyError:
        return None


def _task_values(task: Task, metrics: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """``(primary, display, avg_value)`` for ``metrics`` using the task's hooks and ``avg_scale``."""
    raw = metrics.get(task.primary_metric)
    primary = float(raw) if _is_number(raw) else None
    avg = _call_hook(task, "avg_value", metrics)
    if avg is None and primary is not None:
        avg = primary * task.avg_scale
    display = _call_hook(task, "table_value", metrics)
    return primary, (avg if display is None else display), avg


def _call_hook(task: Task, name: str, metrics: Mapping[str, Any]) -> float | None:
    """A task's optional ``table_value``/``avg_value`` hook; ``None`` when absent or when the stored metrics
    lack what it needs (e.g. results written by an older version)."""
    hook = getattr(task, name, None)
    if not callable(hook):
        return None
    try:
        value = hook(dict(metrics))
    except (KeyError, TypeError, ValueError):
        return None
    return float(value) if _is_number(value) else None


def summarize_task(
    task: Task, metrics: Mapping[str, Any], *, n: int | None = None, extra: Mapping[str, Any] | None = None
) -> TaskResult:
    """The :class:`TaskResult` a runner should store for ``task`` after ``task.aggregate``."""
    if task.primary_metric not in metrics:
        raise ResultsFormatError(
            f"task {task.name!r}: metrics lack its primary metric {task.primary_metric!r} (have {sorted(metrics)})"
        )
    primary, display, avg = _task_values(task, metrics)
    return TaskResult(
        metrics=dict(metrics),
        primary=primary,
        primary_metric=task.primary_metric,
        split=task.split,
        display_name=getattr(task, "display_name", "") or STUDY_COLUMNS.get(task.name, (task.name, ""))[0],
        display=display,
        avg_value=avg,
        n=n,
        version=task.version,
        extra=dict(extra or {}),
    )


def _resolve(name: str, result: TaskResult) -> tuple[float | None, float | None]:
    """Table value and Avg. value of one stored result (stored values win, then the registered task)."""
    display, avg = result.display, result.avg_value
    if display is not None and avg is not None:
        return display, avg
    task = _registered_task(name)
    if task is not None:
        _, t_display, t_avg = _task_values(task, result.metrics)
        if t_display is None and t_avg is None and result.primary is not None:
            t_avg = result.primary * task.avg_scale
            t_display = t_avg
    else:
        scale = result.extra.get("avg_scale")
        t_avg = result.primary * float(scale) if result.primary is not None and _is_number(scale) else None
        t_display = t_avg if t_avg is not None else result.primary
    return (display if display is not None else t_display), (avg if avg is not None else t_avg)


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Column:
    task: str
    name: str
    split: str


@dataclass
class TableRow:
    label: str
    model: str | None
    values: dict[str, float | None]
    avg_values: dict[str, float | None]
    avg: float | None
    source: str = ""


@dataclass
class StudyTable:
    """A study-style table; render with :meth:`to_markdown`, :meth:`to_csv`, :meth:`to_json`, :meth:`write`."""

    columns: list[Column]
    rows: list[TableRow]
    avg_tasks: list[str]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self, decimals: int = 1) -> str:
        def cell(value: float | None) -> str:
            return "" if value is None else f"{value:.{decimals}f}"

        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        header = ["Run", "Avg.", *(esc(c.name) for c in self.columns)]
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            "| " + " | ".join(["", "-", *(esc(c.split or "-") for c in self.columns)]) + " |",
        ]
        for row in self.rows:
            cells = [esc(row.label), cell(row.avg), *(cell(row.values.get(c.task)) for c in self.columns)]
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        names = [c.name if c.split in ("", "-") else f"{c.name} ({c.split})" for c in self.columns]
        writer.writerow(["run", "model", "Avg.", *names])
        for row in self.rows:
            values = [row.avg, *(row.values.get(c.task) for c in self.columns)]
            writer.writerow(
                [row.label, row.model or "", *("" if v is None else repr(round(v, 6)) for v in values)]
            )
        return buffer.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "results_version": RESULTS_VERSION,
            "columns": [{"task": c.task, "name": c.name, "split": c.split} for c in self.columns],
            "avg_tasks": list(self.avg_tasks),
            "rows": [
                {
                    "label": r.label,
                    "model": r.model,
                    "source": r.source,
                    "avg": r.avg,
                    "values": r.values,
                    "avg_values": r.avg_values,
                }
                for r in self.rows
            ],
            "notes": list(self.notes),
        }

    def write(self, out_dir: str | Path, stem: str = "table") -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``."""
        out = Path(out_dir)
        return {
            "markdown": _atomic_write(out / f"{stem}.md", self.to_markdown()),
            "csv": _atomic_write(out / f"{stem}.csv", self.to_csv()),
            "json": _atomic_write(
                out / f"{stem}.json", json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"
            ),
        }


def _column_order(names: set[str]) -> list[str]:
    known = [t for t in STUDY_COLUMNS if t in names]
    return known + sorted(names - set(known))


def _labels(runs: Sequence[RunResults], labels: Sequence[str] | None) -> list[str]:
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    out: list[str] = []
    for i, run in enumerate(runs):
        label = labels[i] if labels is not None else ""
        if not label:
            label = run.run
        if not label and run.source is not None:
            label = run.source.name if run.source.is_dir() else run.source.parent.name or run.source.stem
        label = label or run.model or f"run{i + 1}"
        base, k = label, 2
        while label in out:
            label, k = f"{base} ({k})", k + 1
        out.append(label)
    return out


def build_table(
    runs: Sequence[RunResults],
    *,
    tasks: Sequence[str] | None = None,
    avg_tasks: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> StudyTable:
    """One row per run, one column per task (``tasks`` order, default: the study's order), and ``Avg.``
    over ``avg_tasks`` (default: every column)."""
    if not runs:
        raise ValueError("build_table needs at least one run")
    names = list(tasks) if tasks is not None else _column_order({t for run in runs for t in run.tasks})
    columns = []
    notes: list[str] = []
    for name in names:
        default_name, default_split = STUDY_COLUMNS.get(name, (name, ""))
        stored = [run.tasks[name] for run in runs if name in run.tasks]
        display_name = next((r.display_name for r in stored if r.display_name), default_name)
        splits = list(dict.fromkeys(r.split for r in stored if r.split))
        if len(splits) > 1:
            notes.append(f"{display_name}: runs disagree on the split label ({', '.join(splits)})")
        columns.append(Column(name, display_name, splits[0] if splits else default_split))
        if name in _NOTES:
            notes.append(_NOTES[name])
    averaged = list(avg_tasks) if avg_tasks is not None else names
    unknown = sorted(set(averaged) - set(names))
    if unknown:
        raise ValueError(f"avg_tasks {unknown} are not table columns {names}")
    rows = []
    for label, run in zip(_labels(runs, labels), runs, strict=True):
        values: dict[str, float | None] = {}
        avg_values: dict[str, float | None] = {}
        for name in names:
            values[name], avg_values[name] = (
                _resolve(name, run.tasks[name]) if name in run.tasks else (None, None)
            )
        missing = [n for n in averaged if avg_values.get(n) is None or not math.isfinite(avg_values[n])]
        avg = None
        if averaged and not missing:
            avg = sum(avg_values[n] for n in averaged) / len(averaged)  # type: ignore[misc]
        elif averaged:
            notes.append(f"{label}: Avg. left empty, no value for {', '.join(missing)}")
        limit = run.extra.get("limit")
        if limit is not None:
            notes.append(f"{label}: evaluated with limit={limit}; not comparable to published numbers")
        source = str(run.source) if run.source is not None else ""
        rows.append(TableRow(label, run.model, values, avg_values, avg, source))
    return StudyTable(columns, rows, averaged, notes)


def write_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    avg_tasks: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    stem: str = "table",
) -> StudyTable:
    """Load each results file/folder in ``paths`` (one row each), build the table and write it as Markdown,
    CSV and JSON into ``out_dir``."""
    table = build_table([load_results(p) for p in paths], tasks=tasks, avg_tasks=avg_tasks, labels=labels)
    table.write(out_dir, stem)
    return table
