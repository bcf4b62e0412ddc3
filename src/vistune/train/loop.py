"""The training loop: stages in order, each from the previous stage's output, resumable at any step.

One optimizer step (:meth:`StageRunner._step`):

1. fetch this rank's ``accumulation`` micro-batches of the step (the plan is identical on every rank);
   samples that were skipped are counted per reason;
2. count the supervised tokens of the whole step on every rank and sum them over ranks: ``N``;
3. for each micro-batch, backward ``loss_sum x world / N`` — DDP/FSDP average gradients over ranks, so the
   result is the gradient of (sum of token losses of the global batch) / ``N``: the loss is normalised by
   supervised tokens across micro-batches and ranks, so accumulated, padded and multi-rank runs agree;
4. clip the global gradient norm; if the loss or the norm is not finite, skip the update (gradients
   dropped, step counted) and abort with :class:`TrainingAborted` after ``max_nonfinite_steps`` in a row;
5. set each group's LR from the schedule, step AdamW, log the step (``metrics.jsonl``, progress bar,
   optional TensorBoard), check for a loss spike, and save a resume checkpoint every ``save_every`` steps.

A rank whose micro-batch is empty (all samples skipped, or the partial last batch) runs a one-token dummy
batch with zero weight, so every rank joins the same collectives. A step whose global batch has no
supervised token at all is skipped like a non-finite one (counted as ``empty_steps``).

Steps are numbered from 1 in logs and checkpoints (``step`` = optimizer updates done in the stage).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistune.config import ConfigError, dump_yaml
from vistune.config.train import PARTS, RecipeConfig, StageConfig, accumulation_steps
from vistune.data.templates import IGNORE_INDEX
from vistune.fsutil import atomic_write_json, atomic_write_text
from vistune.progress import ProgressBar
from vistune.train.checkpoint import (
    CheckpointManager,
    CheckpointRef,
    load_weights,
    read_model_info,
    save_stage_output,
    seed_everything,
    stage_output_dir,
)
from vistune.train.dataset import Batch, Collator, SequenceBuilder, SkipLog, TrainDataset
from vistune.train.monitor import (
    FlopsModel,
    MetricsLog,
    SpikeDetector,
    TensorBoard,
    peak_flops,
    peak_memory_gb,
    plot_loss,
    read_metrics,
)
from vistune.train.optim import apply_lr, build_optimizer, lr_factor, set_trainable, warmup_steps
from vistune.train.parallel import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    apply_compile,
    apply_parallelism,
    barrier,
    broadcast_object,
    enable_gradient_checkpointing,
    grad_norm_value,
    init_distributed,
    no_sync,
    resolve_precision,
    resolve_strategy,
    shutdown,
    unwrap,
)
from vistune.train.sampler import BatchPlan, MicroBatchSampler, total_steps

log = logging.getLogger("vistune.train")


class TrainingAborted(RuntimeError):
    """Training cannot continue (e.g. too many non-finite steps in a row); the message says why and where."""


@dataclass
class RunOptions:
    """Command-line options of one ``vistune train`` invocation (not part of the recipe)."""

    output: Path
    stage: str | None = None
    resume: bool = False
    max_steps: int | None = None
    save_every: int | None = None
    strict: bool | None = None
    progress: bool | None = None
    device: str | None = None


@dataclass
class Hooks:
    """Test and integration hooks. ``on_stage_start(runner)`` runs once the stage's model, optimizer and data
    are ready; ``on_step_end(stage_name, step, record)`` after every step (raise there to simulate a crash);
    ``checkpoint_fault(phase)`` inside checkpoint writes."""

    on_stage_start: Callable[[StageRunner], None] | None = None
    on_step_end: Callable[[str, int, dict[str, Any]], None] | None = None
    checkpoint_fault: Callable[[str], None] | None = None


@dataclass
class _Counters:
    """Progress of a stage that must survive a resume."""

    samples: int = 0
    tokens: int = 0
    visual_tokens: int = 0
    flops: float = 0.0
    nonfinite_in_a_row: int = 0
    nonfinite_steps: int = 0
    empty_steps: int = 0
    spikes: int = 0


# ------------------------------------------------------------------------------------------------------
# run level
# ------------------------------------------------------------------------------------------------------
def train(recipe: RecipeConfig, options: RunOptions, hooks: Hooks | None = None) -> dict[str, Any]:
    """Run (or resume) a recipe into ``options.output``; returns the run summary (also ``summary.json``)."""
    hooks = hooks or Hooks()
    info = init_distributed(recipe.parallel, options.device)
    run_dir = Path(options.output)
    file_handler: logging.Handler | None = None
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # train.log records the run's INFO messages
    try:
        todo = []
        for idx, stage in enumerate(recipe.stages):
            if options.stage is not None and stage.name != options.stage:
                continue
            out_dir = stage_output_dir(run_dir, stage.name)
            if out_dir.is_dir() and options.resume:
                log.info("stage %s already finished (%s); skipping it", stage.name, out_dir)
                continue
            todo.append(idx)
        # open every stage's data first: a wrong path in stage 3 must not surface after stage 1's hours
        mixtures = {idx: open_stage_data(recipe, idx) for idx in todo}
        for idx in todo:
            if recipe.stages[idx].init_from:
                stage_init_source(recipe, idx, run_dir)
        _prepare_run_dir(recipe, options, info, run_dir)
        if info.is_main:
            file_handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(file_handler)
        summary = _load_summary(run_dir) if options.resume else {}
        summary.update({"recipe": recipe.name, "output": str(run_dir), "world_size": info.world_size})
        summary.setdefault("stages", {})
        ckpt = CheckpointManager(run_dir, info)
        ckpt.fault = hooks.checkpoint_fault
        if options.resume:
            ckpt.recover()
        barrier(info)
        metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=info.is_main)
        for idx in todo:
            stage = recipe.stages[idx]
            ref = ckpt.latest(idx) if options.resume else None
            runner = StageRunner(recipe, idx, options, info, run_dir, ckpt, metrics, hooks, mixtures.pop(idx))
            summary["stages"][stage.name] = runner.run(ref)
            if info.is_main:
                atomic_write_json(run_dir / "summary.json", _finalise_summary(summary))
        metrics.close()
        summary = _finalise_summary(summary)
        if info.is_main:
            atomic_write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        if file_handler is not None:
            log.removeHandler(file_handler)
            file_handler.close()
        log.setLevel(old_level)
        shutdown(info)


def _prepare_run_dir(recipe: RecipeConfig, options: RunOptions, info: DistInfo, run_dir: Path) -> None:
    """Check the folder against the recipe (decided on rank 0, raised on every rank) and write config.yaml."""
    resolved = recipe.model_dump(mode="json")
    problem: str | None = None
    if info.is_main:
        cfg_file = run_dir / "config.yaml"
        if cfg_file.is_file():
            import yaml

            saved = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
            diff = [k for k in _diff_keys(saved, resolved) if not _RESUMABLE_CHANGE.match(k)]
            if diff:
                problem = (
                    f"{cfg_file} holds a different recipe (differs at {', '.join(diff[:6])}); "
                    "a run folder belongs to one recipe — use a new --output"
                )
            elif not options.resume:
                names = [options.stage] if options.stage else [s.name for s in recipe.stages]
                started = [
                    n
                    for i, n in enumerate(s.name for s in recipe.stages)
                    if n in names
                    and (stage_output_dir(run_dir, n).exists() or CheckpointManager(run_dir, info).list(i))
                ]
                if started:
                    problem = (
                        f"{run_dir} already holds outputs or checkpoints of stage(s) {started}; "
                        "pass --resume to continue, or use a new --output"
                    )
        elif options.resume:
            problem = f"--resume: {run_dir} holds no run (no config.yaml)"
        if problem is None:
            run_dir.mkdir(parents=True, exist_ok=True)
            if not cfg_file.is_file():
                atomic_write_text(cfg_file, dump_yaml(resolved))
    problem = broadcast_object(problem, info)
    if problem:
        raise ConfigError(problem)


#: recipe keys that may change between a run and its resume (launch layout, logging, checkpoint cadence)
_RESUMABLE_CHANGE = re.compile(
    r"^(parallel\.|logging\.|strict$|stages\[\d+\]\.(save_every|keep_last|data\.num_workers)$)"
)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff_keys(x, y, f"{prefix}[{i}]")
        return out
    return [] if a == b else [prefix or "<root>"]


def _load_summary(run_dir: Path) -> dict[str, Any]:
    f = run_dir / "summary.json"
    if f.is_file():
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}
    return {}


def _finalise_summary(summary: dict[str, Any]) -> dict[str, Any]:
    skips: dict[str, int] = {}
    events: dict[str, int] = {}
    for st in summary.get("stages", {}).values():
        for k, v in st.get("skips", {}).items():
            skips[k] = skips.get(k, 0) + v
        for k, v in st.get("data_events", {}).items():
            events[k] = events.get(k, 0) + v
    summary["skips"] = dict(sorted(skips.items()))
    summary["skipped_samples"] = sum(skips.values())
    summary["data_events"] = events
    return summary


# ------------------------------------------------------------------------------------------------------
# stage level
# ------------------------------------------------------------------------------------------------------
def open_stage_data(recipe: RecipeConfig, index: int) -> Any:
    """The stage's :class:`~vistune.data.mixture.Mixture` (indexes the files; errors name the stage)."""
    from vistune.data.mixture import Mixture, MixtureError

    stage = recipe.stages[index]
    data = stage.data
    for key in ("image_folder", "video_folder"):
        folder = getattr(data, key)
        if folder is not None and not Path(folder).is_dir():
            raise ConfigError(f"stages.{stage.name}.data.{key}: {folder} is not a folder")
    try:
        mixture = Mixture.from_path(
            data.path,
            image_folder=data.image_folder,
            seed=data.seed if data.seed is not None else recipe.seed,
            video_folder=data.video_folder,
        )
    except MixtureError as exc:
        raise ConfigError(f"stages.{stage.name}.data.path: {exc}") from None
    if len(mixture) == 0:
        raise ConfigError(f"stages.{stage.name}.data.path: {data.path} holds no samples")
    return mixture


def stage_init_source(recipe: RecipeConfig, index: int, run_dir: Path) -> Path | None:
    """Where stage ``index`` starts: its ``init_from``, else the previous stage's output, else the base."""
    stage = recipe.stages[index]
    if stage.init_from:
        p = Path(stage.init_from).expanduser()
        try:
            read_model_info(p)
        except ConfigError as exc:
            raise ConfigError(f"stages.{stage.name}.init_from: {exc}") from None
        return p
    if index == 0:
        return None
    prev = recipe.stages[index - 1].name
    out = stage_output_dir(run_dir, prev)
    if not out.is_dir():
        raise ConfigError(
            f"stage {stage.name!r} starts from the output of stage {prev!r}, which is not in {out.parent}; "
            f"run that stage first, or set stages.{stage.name}.init_from=FOLDER"
        )
    return out


def build_stage_model(recipe: RecipeConfig, index: int, run_dir: Path) -> tuple[Any, Any, str]:
    """The stage's starting model (fp32, CPU): the base backbones plus the weights of its init source."""
    from vistune.model.lmm import build_model

    stage = recipe.stages[index]
    source = stage_init_source(recipe, index, run_dir)
    cfg = recipe.model
    if stage.visual:
        cfg = cfg.with_visual(**stage.visual)
    held = set(read_model_info(source).get("parts") or PARTS) if source else set()
    seed_everything(recipe.seed)
    # a source holding every part replaces all weights: skip reading the base weights
    model, processor = build_model(cfg, device="cpu", dtype="float32", load_weights=held != set(PARTS))
    if source is not None:
        load_weights(model, source)
    return model, processor, str(source) if source else "base model"


class StageRunner:
    def __init__(
        self,
        recipe: RecipeConfig,
        index: int,
        options: RunOptions,
        info: DistInfo,
        run_dir: Path,
        ckpt: CheckpointManager,
        metrics: MetricsLog,
        hooks: Hooks,
        mixture: Any = None,
    ) -> None:
        self.mixture = mixture
        self.recipe = recipe
        self.index = index
        self.stage: StageConfig = recipe.stages[index]
        self.options = options
        self.info = info
        self.run_dir = run_dir
        self.ckpt = ckpt
        self.metrics = metrics
        self.hooks = hooks
        self.strict = recipe.strict if options.strict is None else options.strict
        self.save_every = options.save_every or self.stage.save_every
        show = recipe.logging.progress if options.progress is None else options.progress
        self.progress = show and info.is_main

    # -- setup ------------------------------------------------------------------------------------------
    def _setup(self, ref: CheckpointRef | None) -> None:
        st, info = self.stage, self.info
        self.accumulation = accumulation_steps(st, info.world_size)
        model, processor, source = build_stage_model(self.recipe, self.index, self.run_dir)
        if ref is not None:
            load_weights(model, ref.path / "model")
        trainable = list(st.trainable)
        if "newline" in trainable and not model.visual.newline:
            log.info("stage %s: visual.newline is off, so the newline vector is not trained", st.name)
            trainable.remove("newline")
            if not trainable:
                raise ConfigError(f"stage {st.name!r}: only 'newline' is trainable but visual.newline is off")
        self.trainable = trainable
        self.param_counts = set_trainable(model, trainable)
        self.source = source
        self.processor = processor
        self.dtype = resolve_precision(st.precision, info.device)
        self.strategy = resolve_strategy(self.recipe.parallel, info)
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.cuda.reset_peak_memory_stats(info.device)
        self.flops_model = FlopsModel(model, trainable)
        model.to(info.device)
        if st.gradient_checkpointing:
            enable_gradient_checkpointing(model, trainable)
        if st.compile:
            n = apply_compile(model)
            log.info("stage %s: compiled %d transformer blocks", st.name, n)
        self.wrapped = apply_parallelism(
            model,
            self.strategy,
            info,
            dtype=self.dtype,
            reshard_after_forward=self.recipe.parallel.fsdp_reshard_after_forward,
        )
        self.model = unwrap(self.wrapped)
        self.model.train()
        self.optimizer = build_optimizer(self.model, st)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.peak = peak_flops(info.device)

        # data
        data = st.data
        mixture = self.mixture or open_stage_data(self.recipe, self.index)
        template = st.chat_template or self.recipe.model.chat_template
        builder = SequenceBuilder(processor, template, st.max_length, st.overflow, st.official_qwen_masking)
        self.dataset = TrainDataset(mixture, builder, strict=self.strict)
        multimodal = mixture.modalities() != 0
        # length proxy: ~4 bytes of JSON per text token, plus the visual tokens of a typical image
        visual_guess = processor.count_tokens((4 * model.geometry.image_size,) * 2).total
        lengths = mixture.length_hints() // 4 + multimodal * visual_guess
        self.plan = BatchPlan(
            lengths,
            multimodal,
            st.global_batch_size,
            seed=self.recipe.seed + self.index,
            group_by=data.group_by,
        )
        planned = total_steps(self.plan, st.epochs, st.max_steps)
        self.total = min(planned, self.options.max_steps) if self.options.max_steps else planned
        self.warmup = warmup_steps(st, self.total)
        self.pad_id = int(processor.tokenizer.pad_token_id)
        self.collator = Collator(self.pad_id, packing=self.stage.packing)
        self.skips_base = SkipLog(self.recipe.logging.first_skips_logged, logger=None)
        self.skips = SkipLog(self.recipe.logging.first_skips_logged)
        self.spike = SpikeDetector(st.spike.window, st.spike.threshold, st.spike.min_history)
        self.counters = _Counters()
        self.start_step = 0
        if ref is not None:
            self._restore(ref)
        self.num_samples = len(mixture)

    def _restore(self, ref: CheckpointRef) -> None:
        self.ckpt.load_optimizer(ref, self.model, self.optimizer)
        state = self.ckpt.load_trainer_state(ref)
        if state.get("total") != self.total:
            log.warning(
                "resuming stage %s planned for %s steps, now %s (different --max-steps?); the LR schedule changes",
                self.stage.name,
                state.get("total"),
                self.total,
            )
        self.start_step = int(state["step"])
        self.skips_base.load_state_dict(state["skips"])
        self.spike.load_state_dict(state["spike"])
        c = state["counters"]
        self.counters = _Counters(**c)
        self.ckpt.restore_rng(state, self.recipe.seed + 1000 * self.index + self.start_step)
        log.info("resumed stage %s at step %d from %s", self.stage.name, self.start_step, ref.path)

    # -- run --------------------------------------------------------------------------------------------
    def run(self, ref: CheckpointRef | None) -> dict[str, Any]:
        st, info = self.stage, self.info
        t_start = time.perf_counter()
        self._setup(ref)
        if ref is None:
            seed_everything(self.recipe.seed + 1000 * self.index + info.rank, info.device)
        # steps logged after the checkpoint we start from (by a run that crashed) are trained again
        self.metrics.rewind(self.index, self.start_step)
        if self.hooks.on_stage_start is not None:
            self.hooks.on_stage_start(self)
        tb = TensorBoard(self.run_dir / "tensorboard", self.recipe.logging.tensorboard and info.is_main)
        self._log_start()
        sampler = MicroBatchSampler(
            self.plan, self.start_step, self.total, info.world_size, info.rank, self.accumulation
        )
        workers = st.data.num_workers
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collator,
            num_workers=workers,
            pin_memory=info.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            # its own generator: creating the iterator must not consume the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.recipe.seed),
        )
        batches = iter(loader)
        progress = ProgressBar(self.progress, f"{st.name}", self.total, self.start_step)
        steps_run = 0
        try:
            with progress:
                for step in range(self.start_step, self.total):
                    record = self._step(step, batches)
                    steps_run += 1
                    if (step + 1) % self.recipe.logging.log_every == 0 or step + 1 == self.total:
                        self.metrics.write(record)
                        tb.log(record, step + 1)
                    if progress.enabled:
                        progress.update(step + 1, _progress_info(record))
                    if self.hooks.on_step_end is not None:
                        self.hooks.on_step_end(st.name, step + 1, record)
                    if self.save_every and (step + 1) % self.save_every == 0 and step + 1 < self.total:
                        self._save_checkpoint(step + 1)
        finally:
            tb.close()
            del batches, loader
        self.metrics.close()
        save_stage_output(
            stage_output_dir(self.run_dir, st.name),
            self.model,
            self.processor,
            PARTS if st.save_weights == "all" else self.trainable,
            info,
            {"stage": st.name, "steps": self.total, "recipe": self.recipe.name},
        )
        result = self._stage_summary(steps_run, time.perf_counter() - t_start)
        self.ckpt.remove_stage(self.index)
        return result

    def _log_start(self) -> None:
        if not self.info.is_main:
            return
        st = self.stage
        counts = {p: c["trainable"] for p, c in self.param_counts.items() if c["trainable"]}
        frozen = {p: c["frozen"] for p, c in self.param_counts.items() if c["frozen"]}
        lrs = {p: st.lr_for(p) for p in self.trainable}
        log.info(
            "stage %s: %d samples, %d steps (warmup %d), global batch %d = micro %d x accum %d x %d rank(s), "
            "strategy %s, %s; trains %s at LR %s; frozen %s; starts from %s",
            st.name,
            len(self.dataset),
            self.total,
            self.warmup,
            st.global_batch_size,
            st.micro_batch_size,
            self.accumulation,
            self.info.world_size,
            self.strategy,
            str(self.dtype).removeprefix("torch."),
            counts,
            lrs,
            frozen or "nothing",
            self.source,
        )

    # -- one step ---------------------------------------------------------------------------------------
    def _step(self, step: int, batches: Any) -> dict[str, Any]:
        st, info = self.stage, self.info
        t0 = time.perf_counter()
        micro: list[Batch] = []
        wait = 0.0
        for _ in range(self.accumulation):
            tw = time.perf_counter()
            micro.append(next(batches))
            wait += time.perf_counter() - tw
        for b in micro:
            for s in b.skips:
                self.skips.add(s)
            if b.num_truncated:
                self.skips.note("truncated", b.num_truncated)
        local_tokens = sum(b.num_loss_tokens for b in micro if not b.is_dummy)
        n_global = float(all_reduce_sum(torch.tensor([local_tokens], dtype=torch.float64), info)[0])
        lrs = apply_lr(
            self.optimizer, lr_factor(step, self.total, self.warmup, st.scheduler, st.min_lr_ratio)
        )

        loss_sum = torch.zeros((), dtype=torch.float64)
        flops = 0.0
        tokens = visual = samples = views = 0
        autocast = (
            torch.autocast(info.device.type, dtype=self.dtype)
            if self.dtype != torch.float32 and self.strategy != "fsdp"
            else contextlib.nullcontext()
        )
        for a, b in enumerate(micro):
            if b.is_dummy:
                if not info.distributed:
                    continue
                b = self._dummy()
            with no_sync(self.wrapped, a < len(micro) - 1), autocast:
                out = self.wrapped(**b.model_inputs(info.device), return_logits=False)
                weight = 0.0 if b.is_dummy or n_global == 0 else info.world_size / n_global
                loss = out.loss_sum * weight
                if self.strategy == "ddp":
                    loss = loss + 0.0 * sum(p.reshape(-1)[:1].sum() for p in self.params)
            loss.backward()
            if b.is_dummy:
                continue
            loss_sum += out.loss_sum.detach().double().cpu()
            flops += self.flops_model.batch_flops(b.seq_lens, b.num_views, b.num_loss_tokens)
            tokens += b.num_tokens
            visual += int(out.num_visual_tokens)
            samples += b.num_samples
            views += b.num_views

        max_norm = st.max_grad_norm if st.max_grad_norm is not None else float("inf")
        norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        stats = all_reduce_sum(
            torch.tensor([float(loss_sum), tokens, visual, samples, views, flops], dtype=torch.float64), info
        ).tolist()
        g_loss_sum, g_tokens, g_visual, g_samples, _g_views, g_flops = stats
        loss = g_loss_sum / n_global if n_global > 0 else float("nan")
        c = self.counters
        skipped = False
        if n_global == 0:
            skipped = True
            c.empty_steps += 1
            log.warning(
                "step %d of stage %s had no supervised token (all samples skipped?)", step + 1, st.name
            )
        elif not (math.isfinite(loss) and math.isfinite(norm)):
            skipped = True
            c.nonfinite_steps += 1
            c.nonfinite_in_a_row += 1
            log.warning(
                "step %d of stage %s: non-finite %s (loss %s, grad norm %s); update skipped (%d in a row)",
                step + 1,
                st.name,
                "loss" if not math.isfinite(loss) else "gradients",
                loss,
                norm,
                c.nonfinite_in_a_row,
            )
            if c.nonfinite_in_a_row >= st.max_nonfinite_steps:
                raise TrainingAborted(
                    f"stage {st.name!r}: {c.nonfinite_in_a_row} non-finite steps in a row (last: step "
                    f"{step + 1}, loss {loss}, grad norm {norm}); lower the learning rate (now {lrs}) or check "
                    f"the data; resume from the last checkpoint in {self.ckpt.root} with --resume"
                )
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            c.nonfinite_in_a_row = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        spike, z = (False, None)
        if st.spike.enabled and not skipped:
            spike, z = self.spike.update(loss)
            if spike:
                c.spikes += 1
                log.warning(
                    "loss spike at step %d of stage %s: %.4f (robust z = %.1f over the last %d steps)",
                    step + 1,
                    st.name,
                    loss,
                    z,
                    len(self.spike.history) - 1,
                )
        c.samples += int(g_samples)
        c.tokens += int(g_tokens)
        c.visual_tokens += int(g_visual)
        c.flops += g_flops
        dt = time.perf_counter() - t0
        mfu = g_flops / (dt * info.world_size * self.peak) if self.peak else None
        return {
            "stage": st.name,
            "stage_index": self.index,
            "step": step + 1,
            "epoch": round((step + 1) / len(self.plan), 6),
            "loss": loss,
            "lr": lrs,
            "grad_norm": norm,
            "supervised_tokens": int(n_global),
            "tokens": int(g_tokens),
            "visual_tokens": int(g_visual),
            "samples": int(g_samples),
            "tokens_per_s": g_tokens / dt,
            "visual_tokens_per_s": g_visual / dt,
            "data_wait_s": wait,
            "step_time_s": dt,
            "peak_mem_gb": peak_memory_gb(info.device),
            "flops": g_flops,
            "tflops_per_s": g_flops / dt / 1e12,
            "mfu": mfu,
            "spike": spike,
            "spike_z": z,
            "skipped_step": skipped,
            "skipped_samples": self.skips_base.total + self.skips.total,
        }

    def _dummy(self) -> Batch:
        """One pad token predicting one pad token, weighted 0: all parameters get a (zero) gradient."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long)
        labels = torch.tensor([[IGNORE_INDEX, self.pad_id]], dtype=torch.long)
        return Batch(ids, torch.ones_like(ids), labels, is_dummy=True)

    # -- checkpoints and summary ------------------------------------------------------------------------
    def _merged_skips(self) -> SkipLog:
        merged = SkipLog(self.recipe.logging.first_skips_logged, logger=None)
        merged.merge(self.skips_base.state_dict())
        for state in all_gather_objects(self.skips.state_dict(), self.info):
            merged.merge(state)
        return merged

    def _save_checkpoint(self, step: int) -> None:
        st = self.stage
        state = {
            "step": step,
            "total": self.total,
            "stage": st.name,
            "stage_index": self.index,
            "world_size": self.info.world_size,
            "skips": self._merged_skips().state_dict(),
            "spike": self.spike.state_dict(),
            "counters": self.counters.__dict__.copy(),
        }
        self.ckpt.save(
            model=self.model,
            optimizer=self.optimizer,
            processor=self.processor,
            stage_index=self.index,
            stage_name=st.name,
            step=step,
            parts=PARTS if st.save_weights == "all" else self.trainable,
            trainer_state=state,
            summary={
                "stage": st.name,
                "stage_index": self.index,
                "step": step,
                "total_steps": self.total,
                "epoch": step / len(self.plan),
                "world_size": self.info.world_size,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            keep_last=st.keep_last,
        )

    def _stage_summary(self, steps_run: int, wall: float) -> dict[str, Any]:
        skips = self._merged_skips()
        c = self.counters
        records = [r for r in read_metrics(self.metrics.path) if r.get("stage_index") == self.index]
        losses = [r["loss"] for r in records if not r.get("skipped_step") and r.get("loss") is not None]
        plot = None
        if self.info.is_main:
            plot = plot_loss(
                records,
                self.run_dir / "stages" / self.stage.name / "loss.png",
                f"{self.recipe.name} — stage {self.stage.name}",
            )
        mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
        tail = losses[-10:]
        return {
            "index": self.index,
            "steps": self.total,
            "steps_run": steps_run,
            "resumed_from": self.start_step or None,
            "samples_in_data": self.num_samples,
            "samples": c.samples,
            "tokens": c.tokens,
            "visual_tokens": c.visual_tokens,
            "flops": c.flops,
            "mean_mfu": float(np.mean(mfus)) if mfus else None,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_10": float(np.mean(tail)) if tail else None,
            "spikes": [r["step"] for r in records if r.get("spike")],
            "nonfinite_steps": [r["step"] for r in records if r.get("skipped_step")],
            "skips": dict(sorted(skips.counts.items())),
            "data_events": dict(skips.events),
            "first_skips": skips.first,
            "trainable": self.trainable,
            "params": self.param_counts,
            "accumulation": self.accumulation,
            "strategy": self.strategy,
            "precision": str(self.dtype).removeprefix("torch."),
            "started_from": self.source,
            "output": str(stage_output_dir(self.run_dir, self.stage.name)),
            "plot": str(plot) if plot else None,
            "wall_time_s": wall,
        }


# ------------------------------------------------------------------------------------------------------
# progress bar
# ------------------------------------------------------------------------------------------------------
def _progress_info(r: dict[str, Any]) -> str:
    """The bar's info column: latest loss, grad norm, LRs, throughput, data wait, memory, spike/skip flag."""
    lr = " ".join(f"{k}={v:.1e}" for k, v in r["lr"].items())
    mfu = f" mfu {r['mfu']:.1%}" if r.get("mfu") is not None else f" {r['tflops_per_s']:.2f} TFLOP/s"
    flag = (
        " [red]SPIKE[/red]" if r.get("spike") else (" [yellow]skipped[/yellow]" if r["skipped_step"] else "")
    )
    return (
        f"loss {r['loss']:.4f} gn {r['grad_norm']:.2f} {lr} {r['tokens_per_s']:.0f} tok/s "
        f"({r['visual_tokens_per_s']:.0f} visual){mfu} wait {r['data_wait_s']:.2f}s "
        f"mem {r['peak_mem_gb']:.1f}G{flag}"
    )


__all__ = [
    "Hooks",
    "RunOptions",
    "StageRunner",
    "TrainingAborted",
    "build_stage_model",
    "stage_init_source",
    "train",
]
