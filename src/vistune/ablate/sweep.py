"""Sweeps are data: a base recipe + axes of overrides (and/or explicit rows) + evaluation + inference variants.

A sweep YAML::

    name: max_grids_x_max_tokens
    recipe: ../demo.yaml                 # the base recipe (path relative to this file)
    set: ["stages.*.save_every=null"]    # overrides for every cell (optional)
    axes:                                # cartesian product of the axes (optional)
      - name: Max. #Grids
        key: visual.grids                # one recipe key ...
        values: {2x2: "max:2x2", 4x4: "max:4x4"}      # label -> value (a list uses str(value) as label)
      - name: Max. #Tokens
        values:                          # ... or, without `key`, each value is a mapping of KEY: VALUE
          (4+1)*T: {visual.cap: per_grid, visual.max_tokens: "5 tiles"}
          (9+1)*T: {visual.cap: per_grid, visual.max_tokens: "10 tiles"}
    rows:                                # explicit cells (optional; appended after the product)
      - {label: "2x2 no cap", knobs: {"Max. #Grids": 2x2}, set: ["visual.grids=max:2x2", "visual.cap=none"]}
    eval:
      tasks: [synth_docvqa, synth_ocr, synth_color]
      data_dir: ${VISTUNE_WORLD}
      batch_size: 16
    inference:                           # evaluate each trained cell again under other visual settings
      - {label: "1x1", set: ["visual.grids=max:1x1"]}

Quote knob names that contain `` #`` inside ``{...}``: YAML reads `` #`` as the start of a comment there.
Recipe keys are the recipe's own (``visual.*``, ``stages.<name>.lr.llm``, ``model.llm.path``, ...).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vistune.config import ConfigError, load_yaml, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axis(_Strict):
    name: str
    key: str | None = Field(None, description="recipe key the values set; omit to give KEY: VALUE mappings")
    values: list[Any] | dict[str, Any]

    @model_validator(mode="after")
    def _check(self) -> Axis:
        if not self.values:
            raise ValueError(f"axis {self.name!r} has no values")
        if self.key is None:
            for label, v in self.labelled():
                if not isinstance(v, dict) or not v:
                    raise ValueError(
                        f"axis {self.name!r}: without `key`, value {label!r} must be a mapping of KEY: VALUE overrides"
                    )
        return self

    def labelled(self) -> list[tuple[str, Any]]:
        if isinstance(self.values, dict):
            return [(str(k), v) for k, v in self.values.items()]
        return [(str(v), v) for v in self.values]

    def overrides(self, value: Any) -> list[str]:
        if self.key is not None:
            return [f"{self.key}={_yaml_scalar(value)}"]
        return [f"{k}={_yaml_scalar(v)}" for k, v in value.items()]


class Row(_Strict):
    label: str
    set: list[str] = []
    knobs: dict[str, Any] = {}


class Variant(_Strict):
    """An inference-time visual setting (only ``visual.*`` keys)."""

    label: str
    set: list[str]

    @field_validator("set")
    @classmethod
    def _visual_only(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not x.startswith("visual.")]
        if bad:
            raise ValueError(f"inference variants may only override visual.* keys, got {bad}")
        return v

    def visual_overrides(self) -> dict[str, Any]:
        from vistune.config import apply_overrides

        return apply_overrides({}, self.set).get("visual", {})


class EvalSpec(_Strict):
    tasks: list[str]
    data_dir: str | None = None
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    avg_tasks: list[str] | None = None


class SweepConfig(_Strict):
    name: str
    description: str = ""
    recipe: str
    set: list[str] = []
    axes: list[Axis] = []
    rows: list[Row] = []
    eval: EvalSpec
    inference: list[Variant] = []
    #: image sizes (W x H) for the tokens-per-image plot
    plot_image_sizes: list[str] = ["336x336", "640x480", "1024x768", "1280x720", "1920x1080", "768x2304"]

    @model_validator(mode="after")
    def _cells(self) -> SweepConfig:
        if not self.axes and not self.rows:
            raise ValueError("a sweep needs axes and/or rows")
        labels = [c.label for c in self.cells()]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"cell labels must be unique, repeated: {dup}")
        return self

    def knob_names(self) -> list[str]:
        names = [a.name for a in self.axes]
        for r in self.rows:
            names += [k for k in r.knobs if k not in names]
        return names

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        if self.axes:
            for combo in itertools.product(*(a.labelled() for a in self.axes)):
                knobs = {a.name: label for a, (label, _) in zip(self.axes, combo, strict=True)}
                sets = list(self.set)
                for a, (_, value) in zip(self.axes, combo, strict=True):
                    sets += a.overrides(value)
                out.append(Cell(" | ".join(label for label, _ in combo), knobs, sets))
        for r in self.rows:
            out.append(Cell(r.label, dict(r.knobs), list(self.set) + list(r.set)))
        return out


class Cell:
    """One trained model of a sweep: a label, its knob values (table columns) and its recipe overrides."""

    def __init__(self, label: str, knobs: dict[str, Any], overrides: list[str]) -> None:
        self.label = label
        self.knobs = knobs
        self.overrides = overrides

    @property
    def slug(self) -> str:
        import re

        s = re.sub(r"[^A-Za-z0-9_.+-]+", "_", self.label).strip("_")
        return s or "cell"

    def __repr__(self) -> str:
        return f"Cell({self.label!r}, {self.overrides})"


def _yaml_scalar(value: Any) -> str:
    """A value as override text (JSON is valid YAML flow syntax)."""
    return json.dumps(value)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, Path]:
    """Read and validate a sweep YAML; returns the config and the resolved base-recipe path."""
    from vistune.config.train import interpolate_env

    path = Path(path)
    try:
        data = interpolate_env(load_yaml(path), hint=False)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    sweep = validate(SweepConfig, data, source=str(path))
    if overrides:
        sweep = sweep.model_copy(update={"set": list(sweep.set) + list(overrides)})
    recipe = (path.parent / sweep.recipe).resolve()
    if not recipe.is_file():
        raise ConfigError(f"{path}: recipe {sweep.recipe} not found (looked at {recipe})")
    return sweep, recipe
