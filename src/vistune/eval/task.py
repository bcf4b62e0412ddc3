"""The evaluation task interface and registry.

A task is one benchmark definition: how to read the local copy of its dataset, how to build the prompt,
which generation settings to use, how to parse and score one prediction, and how to aggregate.
Task names follow lmms-eval so results map one to one.

The runner (``vistune.eval.runner``) drives a task like this::

    task = get_task("chartqa")
    for doc in task.load(data_dir, limit=N):
        messages = task.doc_to_messages(doc)          # HF-style chat messages, images as {"type": "image"}
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        prediction = generate(prompt, doc.images, task.generation)
        record = task.score(doc, prediction)          # per-sample dict (JSON-serialisable)
    metrics = task.aggregate(records)                 # {"metric name": value, ...}
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenerationSettings:
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    do_sample: bool = False
    until: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "until": list(self.until),
        }


@dataclass
class Doc:
    """One evaluation sample. ``images`` holds PIL images or zero-argument callables that load them."""

    doc_id: str
    images: list[Any]
    target: Any
    data: dict[str, Any] = field(default_factory=dict)

    def load_images(self) -> list[Any]:
        return [im() if callable(im) else im for im in self.images]


class Task:
    """Base class. Subclasses set the class attributes and implement the four methods."""

    name: str = ""
    version: str = "1"
    split: str = ""  # shown under the column name in study-style tables (e.g. "test", "val")
    primary_metric: str = "score"
    #: multiply the primary metric by this to get the 0-100 value used for ``Avg.`` (MME: 100/2800)
    avg_scale: float = 100.0
    higher_is_better: bool = True
    chance: float | None = None
    judged: bool = False  # needs an LLM judge (see vistune.eval.judge)
    generation: GenerationSettings = GenerationSettings()
    #: environment variable that may point at the dataset folder (in addition to --data-dir/<name>)
    data_env: str | None = None

    def load(self, data_dir: str | Path | None, limit: int | None = None) -> Iterator[Doc]:
        raise NotImplementedError

    def doc_to_messages(self, doc: Doc) -> list[dict[str, Any]]:
        raise NotImplementedError

    def score(self, doc: Doc, prediction: str) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "split": self.split,
            "primary_metric": self.primary_metric,
            "judged": self.judged,
            "chance": self.chance,
            "generation": self.generation.as_dict(),
        }


TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator: register a task class (or factory) under its exact lmms-eval name."""

    def deco(factory: Callable[[], Task]) -> Callable[[], Task]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        TASKS[name] = factory
        return factory

    return deco


def get_task(name: str) -> Task:
    _import_builtin_tasks()
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]()


def list_tasks() -> list[str]:
    _import_builtin_tasks()
    return sorted(TASKS)


def _import_builtin_tasks() -> None:
    import importlib

    try:
        importlib.import_module("vistune.eval.tasks")
    except ModuleNotFoundError as exc:  # the package may not exist yet in a partial checkout
        if exc.name != "vistune.eval.tasks":
            raise
