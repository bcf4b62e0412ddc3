"""The evaluation runner: batched generation over registered tasks, resumable, data-parallel.

For each task: docs are loaded (``--limit`` applies), sharded by index across ranks under torchrun, grouped
into batches (left padding, KV cache; batched output equals batch-size-1 output, tested in the model tests),
generated, parsed and scored by the task, and appended to ``samples/<task>.rank<r>.jsonl`` as they finish —
a crash loses at most one batch, and a re-run skips finished samples. Rank 0 merges the shards (ordered by
document position, so sharding cannot change scores), aggregates and writes ``results.json``.

Every sample record stores what re-scoring needs (``doc`` without images, raw prediction), so
``vistune eval score`` recomputes metrics after a metric fix with neither the model nor the dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vistune.eval.task import Doc, Task, get_task

RESULTS_FILE = "results.json"
SAMPLES_DIR = "samples"


def _jsonable(value: Any) -> Any:
    """Keep only JSON-serialisable structure (drop images/bytes)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if _is_serialisable(v)}
    return None


def _is_serialisable(value: Any) -> bool:
    if isinstance(value, bytes | bytearray):
        return False
    mod = type(value).__module__
    return not (
        mod.startswith("PIL")
        or mod.startswith("torch")
        or mod.startswith("numpy")
        and hasattr(value, "shape")
    )


def doc_to_json(doc: Doc) -> dict[str, Any]:
    return {"doc_id": doc.doc_id, "target": _jsonable(doc.target), "data": _jsonable(doc.data)}


def doc_from_json(d: dict[str, Any]) -> Doc:
    return Doc(doc_id=d["doc_id"], images=[], target=d.get("target"), data=d.get("data") or {})


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class EvalOptions:
    data_dir: str | None = None
    limit: int | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None  # override every task's (e.g. for smoke runs)
    progress: bool = True
    judge: Any = None  # a vistune.eval.judge client, attached to judged tasks
    extra: dict[str, Any] = field(default_factory=dict)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that sample simply runs again
    return out


def _stop_ids(processor: Any, template_stops: Sequence[str]) -> set[int]:
    tok = processor.tokenizer
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    for s in template_stops:
        tid = tok.convert_tokens_to_ids(s)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            ids.add(tid)
    return ids


def _truncate(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def generate_batch(
    model: Any,
    processor: Any,
    messages: list[list[dict[str, Any]]],
    images: list[list[Any]],
    gen: Any,
    max_new_tokens: int,
) -> tuple[list[str], list[str], int]:
    """Prompts -> stripped predictions (raw decoded text before stripping, new-token count)."""
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in messages]
    batch = processor(text=prompts, images=images, padding_side="left")
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=bool(gen.do_sample and gen.temperature > 0),
        temperature=gen.temperature or 1.0,
        top_p=gen.top_p or 1.0,
        eos_token_id=sorted(_stop_ids(processor, processor.stop_strings())),
    )
    raw = processor.batch_decode(out, skip_special_tokens=True)
    # the template's stop strings end generation (as EOS does); `until` is not applied, matching lmms-eval's llava
    preds = [_truncate(r, processor.stop_strings()).strip() for r in raw]
    n_new = int((out != (processor.tokenizer.pad_token_id or -1)).sum())
    return prompts, preds, n_new


def run_task(model: Any, processor: Any, task: Task, out_dir: Path, opts: EvalOptions) -> dict[str, Any]:
    rank, world = _dist()
    samples_dir = out_dir / SAMPLES_DIR
    samples_dir.mkdir(parents=True, exist_ok=True)
    shard_path = samples_dir / f"{task.name}.rank{rank}.jsonl"
    if task.judged and opts.judge is None:
        raise RuntimeError(
            f"task {task.name} is judged by an LLM: give a judge (--judge-model / VISTUNE_JUDGE_MODEL and an "
            "OpenAI-compatible endpoint)"
        )
    if opts.judge is not None and hasattr(task, "judge"):
        task.judge = opts.judge  # judged tasks, and rule-first tasks with a judge fallback (MathVista)
    docs = list(task.load(opts.data_dir, limit=opts.limit))
    order = {d.doc_id: i for i, d in enumerate(docs)}
    mine = [d for i, d in enumerate(docs) if i % world == rank]
    done = {r["doc_id"] for r in _read_jsonl(shard_path) if "doc_id" in r}
    todo = [d for d in mine if d.doc_id not in done]
    gen = task.generation
    max_new = opts.max_new_tokens or gen.max_new_tokens
    bs = max(1, opts.batch_size)
    t0 = time.perf_counter()
    new_tokens = 0
    progress = None
    if opts.progress and rank == 0 and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn(f"[bold]{task.name}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        progress.start()
        bar = progress.add_task(task.name, total=len(todo), rate="")
    try:
        with shard_path.open("a", encoding="utf-8") as f:
            for start in range(0, len(todo), bs):
                chunk = todo[start : start + bs]
                messages = [task.doc_to_messages(d) for d in chunk]
                images = [d.load_images() for d in chunk]
                prompts, preds, n_new = generate_batch(model, processor, messages, images, gen, max_new)
                new_tokens += n_new
                score_many = getattr(task, "score_many", None)
                records = (
                    score_many(chunk, preds)
                    if score_many
                    else [task.score(d, p) for d, p in zip(chunk, preds, strict=True)]
                )
                for d, p, pred, record in zip(chunk, prompts, preds, records, strict=True):
                    line = {
                        "doc_id": d.doc_id,
                        "prompt": p,
                        "prompt_hash": prompt_hash(p),
                        "prediction": pred,
                        "doc": doc_to_json(d),
                        "record": record,
                    }
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                f.flush()
                if progress is not None:
                    dt = max(time.perf_counter() - t0, 1e-9)
                    progress.update(
                        bar,
                        advance=len(chunk),
                        rate=f"{(start + len(chunk)) / dt:.1f} samples/s, {new_tokens / dt:.0f} tok/s",
                    )
    finally:
        if progress is not None:
            progress.stop()
    _barrier()
    wall = time.perf_counter() - t0
    if rank != 0:
        return {}
    lines: list[dict[str, Any]] = []
    for r in range(world):
        lines.extend(_read_jsonl(samples_dir / f"{task.name}.rank{r}.jsonl"))
    seen: dict[str, dict[str, Any]] = {}
    for ln in lines:
        if ln.get("doc_id") in order:
            seen[ln["doc_id"]] = ln
    merged = sorted(seen.values(), key=lambda ln: order[ln["doc_id"]])
    with (samples_dir / f"{task.name}.jsonl").open("w", encoding="utf-8") as f:
        for ln in merged:
            f.write(json.dumps(ln, ensure_ascii=False) + "\n")
    metrics = task.aggregate([ln["record"] for ln in merged])
    return task_result(task, metrics, n=len(merged), wall=wall, prompts=[ln["prompt"] for ln in merged[:3]])


def task_result(
    task: Task, metrics: dict[str, float], *, n: int, wall: float | None, prompts: list[str]
) -> dict[str, Any]:
    """One task's entry in ``results.json`` (the :class:`vistune.eval.report.TaskResult` shape + run facts)."""
    from vistune.eval.report import summarize_task

    out = summarize_task(task, metrics, n=n).to_dict()
    out.update(
        {
            "task": task.name,
            "avg_scale": task.avg_scale,
            "chance": task.chance,
            "wall_s": wall,
            "generation": task.generation.as_dict(),
            "example_prompts": prompts,
            "prompt_hashes": [prompt_hash(p) for p in prompts],
        }
    )
    return out


def evaluate(
    model: Any,
    processor: Any,
    tasks: Sequence[str],
    output: str | Path,
    opts: EvalOptions | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Run ``tasks``; write samples and ``results.json`` under ``output``; return the results dict."""
    opts = opts or EvalOptions()
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, _ = _dist()
    model.eval()
    results: dict[str, Any] = {}
    for name in tasks:
        task = get_task(name)
        with torch.no_grad():
            res = run_task(model, processor, task, out_dir, opts)
        if rank == 0:
            results[name] = res
    if rank != 0:
        return {}
    payload = {
        "model": model_name,
        "model_config": model.config.model_dump(mode="json") if hasattr(model, "config") else None,
        "visual": processor.visual.model_dump(mode="json"),
        "limit": opts.limit,
        "batch_size": opts.batch_size,
        "judge": getattr(opts.judge, "model", None),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": results,
    }
    from vistune.fsutil import atomic_write_json

    existing = out_dir / RESULTS_FILE
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
            if old.get("visual") == payload["visual"]:
                payload["tasks"] = {**old.get("tasks", {}), **results}
        except (json.JSONDecodeError, OSError):
            pass
    atomic_write_json(existing, payload)
    return payload


def rescore(
    samples_file: str | Path, task_name: str | None = None, *, judge: Any = None, data_dir: str | None = None
) -> dict[str, Any]:
    """Re-score a saved ``samples/<task>.jsonl`` with the current metric code.

    Rule-based tasks need neither the model nor the dataset (records carry the document without images).
    LLM-judged tasks need a judge (a warm judge cache makes this free) and, when the judge must see the
    image (Image-DC), the dataset: documents are then reloaded from ``data_dir`` by id.
    """
    path = Path(samples_file)
    name = task_name or path.name.split(".")[0]
    task = get_task(name)
    lines = _read_jsonl(path)
    if not lines:
        raise ValueError(f"{path}: no sample records found")
    for i, ln in enumerate(lines):
        if "doc" not in ln or "prediction" not in ln:
            raise ValueError(f"{path}: line {i + 1} lacks 'doc' or 'prediction' — not a vistune samples file")
    docs = [doc_from_json(ln["doc"]) for ln in lines]
    if task.judged:
        if judge is None:
            raise RuntimeError(f"task {name} is LLM-judged: give a judge to re-score it")
        task.judge = judge
        if data_dir is not None:
            by_id = {d.doc_id: d for d in task.load(data_dir)}
            missing = [d.doc_id for d in docs if d.doc_id not in by_id]
            if missing:
                raise ValueError(f"{path}: documents {missing[:5]} are not in the dataset under {data_dir}")
            docs = [by_id[d.doc_id] for d in docs]
    preds = [ln["prediction"] for ln in lines]
    score_many = getattr(task, "score_many", None)
    records = (
        score_many(docs, preds)
        if score_many
        else [task.score(d, p) for d, p in zip(docs, preds, strict=True)]
    )
    metrics = task.aggregate(records)
    return task_result(
        task, metrics, n=len(records), wall=None, prompts=[ln.get("prompt", "") for ln in lines[:3]]
    )


def fmt_score(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"
