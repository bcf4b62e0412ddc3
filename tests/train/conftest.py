"""Shared helpers for the training tests: a generated toy dataset and small recipes over it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from vistune.config.train import RecipeConfig, recipe_from_dict
from vistune.train.toydata import write_toy_dataset


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP
    threads slow these tests down ten-fold when another process holds the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n=24, seed=0)


@pytest.fixture(scope="session")
def bad_toy_data(tmp_path_factory) -> dict[str, Path]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy_bad"), n=12, seed=1, bad_rows=True)


def stage_dict(d: dict[str, Path], name: str = "sft", **kw: Any) -> dict[str, Any]:
    st = {
        "name": name,
        "data": {"path": str(d["instruct"]), "image_folder": str(d["root"])},
        "trainable": ["connector", "newline", "llm", "vision"],
        "lr": {"default": 2e-3, "vision": 2e-4},
        "global_batch_size": 4,
        "micro_batch_size": 2,
        "max_steps": 6,
        "warmup_ratio": 0.2,
        "precision": "fp32",
        "max_length": 512,
        "chat_template": "qwen_1_5",
    }
    st.update(kw)
    return st


def make_recipe(stages: list[dict[str, Any]], overrides: list[str] | None = None, **top: Any) -> RecipeConfig:
    data = {
        "name": "test",
        "seed": 0,
        "model": "tiny",
        "visual": {"grids": "max:2x2", "cap": "total", "max_tokens": "3 tiles"},
        "logging": {"progress": False},
        "stages": copy.deepcopy(stages),
    }
    data.update(top)
    return recipe_from_dict(data, overrides)


def losses(run_dir: Path, stage: str | None = None) -> list[float]:
    from vistune.train.monitor import read_metrics

    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if stage in (None, r["stage"])]
