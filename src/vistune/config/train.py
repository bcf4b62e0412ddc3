"""Training recipes as data: a recipe is a model config plus an ordered list of stages.

A recipe YAML looks like::

    name: tiny
    seed: 0
    base: other.yaml            # optional: start from another recipe (path relative to this file)
    set: ["stages.sft.lr.llm=1e-5"]   # optional: overrides applied on top of ``base`` (ablations)
    model: tiny                 # a model preset name, or a ModelConfig mapping (vision/connector/llm/visual)
    visual: {grids: "max:3x3"}  # optional: merged into model.visual
    defaults: {precision: auto} # optional: keys every stage inherits (a stage's own keys win)
    parallel: {strategy: auto}
    stages:
      - name: align
        data: {path: "${VISTUNE_DATA}/blip_558k.json", image_folder: "${VISTUNE_DATA}/images"}
        trainable: [connector]
        lr: {connector: 1e-3}
        global_batch_size: 256
        chat_template: plain
      - name: sft
        ...

Resolution order (:func:`load_recipe`): read the YAML -> resolve ``base`` recursively (deep merge: mappings
merge key by key, everything else is replaced) -> apply the file's ``set`` list -> expand a preset name in
``model`` -> apply command-line ``--set KEY=VALUE`` overrides -> interpolate ``${ENV}`` / ``${ENV:-default}``
in strings -> reject ``???`` (a required value nobody set) -> merge ``visual`` and ``defaults`` -> validate.

Override keys address stages by name or index, or ``*`` for all: ``stages.sft.lr.llm=1e-5``,
``stages.0.max_steps=10``, ``stages.*.micro_batch_size=2``.

Rules a stage enforces (each violation is a :class:`~vistune.config.ConfigError` naming the field):

* ``trainable`` lists parts of the model: ``vision``, ``connector``, ``llm`` (decoder, embeddings, head),
  ``newline`` (the learned row-separator vector);
* every trainable part has a learning rate: ``lr.<part>`` or else ``lr.default``;
* ``global_batch_size`` must be a multiple of ``micro_batch_size x world size`` (checked when the world size
  is known, by :func:`accumulation_steps`); the number of accumulation steps is derived, never given.
"""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vistune.config.io import ConfigError, load_yaml, parse_override, validate
from vistune.config.model import CONFIG_VERSION, ModelConfig

PARTS: tuple[str, ...] = ("vision", "connector", "llm", "newline")
Part = Literal["vision", "connector", "llm", "newline"]
REQUIRED = "???"

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataConfig(_Strict):
    """Where a stage's samples come from (see :class:`vistune.data.mixture.Mixture`)."""

    path: str = Field(description="a .json/.jsonl file, a brace list of files, or a .yaml mixture")
    image_folder: str | None = Field(None, description="folder that relative image paths are joined to")
    video_folder: str | None = None
    seed: int | None = Field(None, ge=0, description="mixture seed (random:K draws); default: recipe seed")
    group_by: Literal["modality_length", "length", "random"] = Field(
        "modality_length",
        description="batch grouping: single-modality global batches with length-sorted micro-batches "
        "(reference default), length only, or plain shuffling",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = in the main process)")


class LRConfig(_Strict):
    """Learning rate per part; a part without its own value uses ``default``."""

    default: float | None = Field(None, gt=0)
    llm: float | None = Field(None, gt=0)
    vision: float | None = Field(None, gt=0)
    connector: float | None = Field(None, gt=0)
    newline: float | None = Field(None, gt=0)

    def for_part(self, part: str) -> float | None:
        own = getattr(self, part)
        return own if own is not None else self.default


class SpikeConfig(_Strict):
    """Loss-spike detector: robust z-score of the loss against the median/MAD of the last ``window`` steps."""

    enabled: bool = True
    window: int = Field(100, ge=5)
    threshold: float = Field(6.0, gt=0, description="robust z-score above which a loss is a spike")
    min_history: int = Field(20, ge=3, description="steps of history before spikes can be flagged")


class StageConfig(_Strict):
    """One training stage: what trains, on which data, how fast, for how long."""

    name: str
    data: DataConfig
    trainable: tuple[Part, ...]
    lr: LRConfig
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0, description="overrides warmup_ratio when given")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="LR floor as a fraction of the peak")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    global_batch_size: int = Field(ge=1, description="samples per optimizer step, over all ranks")
    micro_batch_size: int = Field(1, ge=1, description="samples per forward pass on one rank")
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the global grad norm; null = no clipping"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on a GPU that supports it, fp32 otherwise"
    )
    gradient_checkpointing: bool = False
    packing: bool = Field(
        False,
        description="pack each micro-batch into one row (positions restart per sample, attention isolated "
        "per sample, no padding); same loss and gradients as padding",
    )
    compile: bool = Field(False, description="torch.compile every LLM decoder layer and vision encoder layer")
    chat_template: str | None = Field(None, description="template registry key; default: the model's")
    official_qwen_masking: bool = False
    max_length: int = Field(4096, ge=8, description="positions after image expansion")
    overflow: Literal["truncate_turns", "drop"] = Field(
        "truncate_turns",
        description="over-long samples: keep the leading exchanges that fit (never cutting an image), or drop",
    )
    visual: dict[str, Any] | None = Field(None, description="visual overrides for this stage only")
    init_from: str | None = Field(
        None, description="checkpoint folder to start from instead of the previous stage's output"
    )
    save_every: int | None = Field(None, ge=1, description="resume checkpoint every N steps")
    keep_last: int = Field(2, ge=1, description="resume checkpoints kept per stage")
    save_weights: Literal["all", "trainable"] = Field(
        "all", description="the stage output holds all weights, or only the trainable parts (Stage-1)"
    )
    max_nonfinite_steps: int = Field(5, ge=1, description="abort after this many non-finite steps in a row")
    spike: SpikeConfig = SpikeConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"stage name {v!r} must be letters, digits, '_', '.', '-' (used in folder names)"
            )
        return v

    @field_validator("trainable", mode="before")
    @classmethod
    def _trainable(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list | tuple):
            if not v:
                raise ValueError("a stage must train at least one part (vision, connector, llm, newline)")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate parts in {list(v)}")
        return v

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            from vistune.data.templates import get_template

            get_template(v)
        return v

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        missing = [p for p in self.trainable if self.lr.for_part(p) is None]
        if missing:
            raise ValueError(
                f"stage {self.name!r}: no learning rate for trainable part(s) {missing}; "
                f"set lr.{missing[0]} or lr.default"
            )
        if self.official_qwen_masking and self.chat_template not in (None, "qwen_1_5", "chatml", "qwen_2"):
            raise ValueError("official_qwen_masking only applies to the qwen (ChatML) templates")
        return self

    def lr_for(self, part: str) -> float:
        lr = self.lr.for_part(part)
        assert lr is not None
        return lr


class ParallelConfig(_Strict):
    strategy: Literal["auto", "single", "ddp", "fsdp"] = Field(
        "auto", description="auto = ddp when launched on several ranks, single otherwise"
    )
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    fsdp_reshard_after_forward: bool = True
    timeout_minutes: int = Field(60, ge=1)


class LoggingConfig(_Strict):
    log_every: int = Field(1, ge=1, description="metrics.jsonl and progress update every N steps")
    progress: bool = True
    tensorboard: bool = Field(
        False, description="also write TensorBoard events (if tensorboard is installed)"
    )
    first_skips_logged: int = Field(10, ge=0, description="bad samples logged with file and row")


class RecipeConfig(_Strict):
    config_version: int = CONFIG_VERSION
    name: str = "recipe"
    description: str = ""
    seed: int = Field(0, ge=0)
    model: ModelConfig
    stages: tuple[StageConfig, ...]
    parallel: ParallelConfig = ParallelConfig()
    logging: LoggingConfig = LoggingConfig()
    strict: bool = Field(False, description="fail on the first bad sample instead of skipping it")

    @model_validator(mode="before")
    @classmethod
    def _drop_disabled(cls, data: Any) -> Any:
        """A stage with ``enabled: false`` is left out (ablations: "no Stage-1.5"); the next enabled stage
        starts from the previous enabled stage's output."""
        if isinstance(data, dict) and isinstance(data.get("stages"), list | tuple):
            stages = []
            for st in data["stages"]:
                if isinstance(st, dict) and "enabled" in st:
                    st = dict(st)
                    if not st.pop("enabled"):
                        continue
                stages.append(st)
            data = {**data, "stages": stages}
        return data

    @model_validator(mode="after")
    def _stages(self) -> RecipeConfig:
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique, repeated: {dup}")
        return self

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"--stage {name!r}: the recipe has stages {[s.name for s in self.stages]}")

    def stage_index(self, name: str) -> int:
        return [s.name for s in self.stages].index(self.stage(name).name)


# ------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------
def deep_merge(base: Any, top: Any) -> Any:
    """Mappings merge key by key (``top`` wins); any other value in ``top`` replaces ``base``'s."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = copy.deepcopy(base)
        for k, v in top.items():
            out[k] = deep_merge(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(top)


def _stage_selector(stages: list[Any], sel: str, item: str) -> list[int]:
    if sel == "*":
        return list(range(len(stages)))
    if sel.lstrip("-").isdigit():
        k = int(sel)
        if not -len(stages) <= k < len(stages):
            raise ConfigError(f"override {item!r}: stage index {k} out of range ({len(stages)} stages)")
        return [k % len(stages)]
    hits = [i for i, s in enumerate(stages) if isinstance(s, dict) and s.get("name") == sel]
    if not hits:
        names = [s.get("name") for s in stages if isinstance(s, dict)]
        raise ConfigError(f"override {item!r}: no stage named {sel!r} (stages: {names})")
    return hits


def _set_path(node: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    for i, part in enumerate(path[:-1]):
        if part == "stages" and isinstance(node.get("stages"), list):
            targets = _stage_selector(node["stages"], path[i + 1], item)
            rest = path[i + 2 :]
            if not rest:
                raise ConfigError(f"override {item!r}: name a field of the stage, e.g. stages.NAME.lr.llm")
            for t in targets:
                _set_path(node["stages"][t], rest, value, item)
            return
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"override {item!r}: {where} is a {type(nxt).__name__}, not a section")
        node = nxt
    node[path[-1]] = value


def apply_recipe_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides; ``stages.<name|index|*>.`` addresses stages in the list.

    Values are YAML scalars; exponent numbers without a dot (``1e-5``), which YAML 1.1 leaves as strings, are
    read as floats.
    """
    out = copy.deepcopy(data)
    for item in overrides or []:
        path, value = parse_override(item)
        if isinstance(value, str) and _FLOAT_RE.match(value):
            value = float(value)  # YAML 1.1 reads "1e-5" as a string; learning rates are written that way
        _set_path(out, path, value, item)
    return out


def interpolate_env(data: Any, where: str = "", env: dict[str, str] | None = None, hint: bool = True) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; unset variables are a ConfigError.

    ``where`` is the key path of ``data``; errors name it and, with ``hint``, the ``--set`` that overrides it
    (pass ``hint=False`` for files whose keys are not recipe keys, e.g. sweeps).
    """
    env = os.environ if env is None else env
    if isinstance(data, dict):
        return {
            k: interpolate_env(v, f"{where}.{k}" if where else str(k), env, hint) for k, v in data.items()
        }
    if isinstance(data, list):
        return [interpolate_env(v, f"{where}[{i}]", env, hint) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data
    if data.strip() == REQUIRED:
        how = f"; give it with --set {_set_key(where)}=VALUE" if hint else ""
        raise ConfigError(f"{where}: a required value is not set{how}")

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        how = f" or override the value with --set {_set_key(where)}=..." if hint else ""
        raise ConfigError(
            f"{where}: environment variable {name} is not set (used in {data!r}); export {name}=...{how}"
        )

    return _ENV_RE.sub(sub, data)


def _set_key(where: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", where)


def _read_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"recipe base chain loops: {chain}")
    data = load_yaml(path)
    base = data.pop("base", None)
    sets = data.pop("set", None)
    if sets is not None and (not isinstance(sets, list) or not all(isinstance(s, str) for s in sets)):
        raise ConfigError(f"{path}: 'set' must be a list of 'KEY=VALUE' strings")
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a path to another recipe, got {base!r}")
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        data = deep_merge(_read_with_base(base_path, (*seen, path)), data)
    return apply_recipe_overrides(data, sets)


def _expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``model: <preset name>`` -> the preset's model mapping (in place; returns ``data``)."""
    if isinstance(data.get("model"), str):
        from vistune.model.presets import model_preset

        data["model"] = model_preset(data["model"])
    return data


def resolve_recipe_dict(
    data: dict[str, Any], overrides: list[str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Everything :func:`load_recipe` does after reading the YAML, returning the plain resolved dict."""
    data = _expand_model_preset(copy.deepcopy(data))
    # again after the overrides: one may name another preset (e.g. ``model=world-m``)
    data = _expand_model_preset(apply_recipe_overrides(data, overrides))
    data = interpolate_env(data, env=env)
    visual = data.pop("visual", None)
    if visual is not None:
        if not isinstance(visual, dict) or not isinstance(data.get("model"), dict):
            raise ConfigError("visual: expected a mapping merged into model.visual")
        data["model"]["visual"] = deep_merge(data["model"].get("visual") or {}, visual)
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise ConfigError("defaults: expected a mapping of stage keys")
    stages = data.get("stages")
    if isinstance(stages, dict):  # also accept {name: {...}} in YAML order
        stages = [{"name": k, **(v or {})} for k, v in stages.items()]
    if isinstance(stages, list):
        data["stages"] = [deep_merge(defaults, s) if isinstance(s, dict) else s for s in stages]
    return data


def load_recipe(
    path: str | Path, overrides: list[str] | None = None, env: dict[str, str] | None = None
) -> RecipeConfig:
    """Read, resolve and validate a recipe YAML (see the module docstring for the order of steps)."""
    path = Path(path)
    data = _read_with_base(path)
    return validate(RecipeConfig, resolve_recipe_dict(data, overrides, env), source=str(path))


def recipe_from_dict(
    data: dict[str, Any], overrides: list[str] | None = None, env: dict[str, str] | None = None
) -> RecipeConfig:
    return validate(RecipeConfig, resolve_recipe_dict(data, overrides, env))


def accumulation_steps(stage: StageConfig, world_size: int) -> int:
    """Micro-batches per rank per optimizer step: ``global / (micro x world)``, which must be whole."""
    per_step = stage.micro_batch_size * world_size
    if stage.global_batch_size % per_step:
        raise ConfigError(
            f"stages.{stage.name}.global_batch_size={stage.global_batch_size} is not a multiple of "
            f"micro_batch_size ({stage.micro_batch_size}) x world size ({world_size}) = {per_step}; "
            f"use e.g. global_batch_size={math.ceil(stage.global_batch_size / per_step) * per_step}"
        )
    return stage.global_batch_size // per_step


__all__ = [
    "PARTS",
    "DataConfig",
    "LRConfig",
    "LoggingConfig",
    "ParallelConfig",
    "RecipeConfig",
    "SpikeConfig",
    "StageConfig",
    "accumulation_steps",
    "apply_recipe_overrides",
    "deep_merge",
    "interpolate_env",
    "load_recipe",
    "recipe_from_dict",
    "resolve_recipe_dict",
]
