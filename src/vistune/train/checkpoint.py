"""Checkpoints that survive crashes: stage outputs, resume checkpoints, and loading weights onto a base model.

Run folder layout::

    RUN/config.yaml  metrics.jsonl  summary.json  train.log
    RUN/stages/<stage>/model/          # the stage's output (vistune model folder); the next stage starts here
    RUN/stages/<stage>/loss.png
    RUN/checkpoints/s00-<stage>/step-00000040/
        model/                         # vistune model folder (all weights, or the trainable parts)
        optimizer.pt                   # full (unsharded) optimizer state keyed by parameter name
        trainer_state.pt               # RNG states of every rank, spike history, skip counts, counters
        state.json                     # stage, step, epoch, world size (human-readable)

**Atomicity.** Every folder above is written into a temporary sibling and renamed into place in one step
(:func:`vistune.fsutil.atomic_dir`), so a folder is either complete or absent. A process killed during a
save leaves at most a ``.step-*.tmp-*`` folder, which :meth:`CheckpointManager.recover` deletes on resume
(and a ``.step-*.old-*`` folder from the replace of an existing one, which it renames back if the new
folder never arrived). Resume therefore always finds the last *complete* checkpoint and loses at most the
steps after it.

**World-size independence.** Weights and optimizer state are saved as full, unsharded tensors keyed by
parameter name (``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True``), so a
checkpoint written by N ranks (DDP or FSDP2) resumes on any number of ranks. RNG states are saved per rank;
a rank without a saved state (more ranks than before) seeds from ``(seed, stage, step, rank)``.

**Partial weights.** A model folder records which parts it holds (``parts`` in its config). A Stage-1 output
with ``save_weights: trainable`` holds only the connector (and newline); :func:`load_weights` puts them onto
a freshly built base model, and the next stage trains from there.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistune.fsutil import atomic_dir
from vistune.model.lmm import load_weights, read_model_info, write_model_folder
from vistune.train.parallel import DistInfo, all_gather_objects, barrier, broadcast_object

log = logging.getLogger("vistune.train")

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAINER_FILE = "trainer_state.pt"
MODEL_DIR = "model"

_STEP_RE = re.compile(r"^step-(\d+)$")
_STAGE_RE = re.compile(r"^s(\d+)-(.+)$")


# ------------------------------------------------------------------------------------------------------
# model folders
# ------------------------------------------------------------------------------------------------------
def full_state_dict(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """Unsharded CPU copy of the weights (on rank 0; other ranks get ``{}`` under FSDP). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not info.distributed:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


# ------------------------------------------------------------------------------------------------------
# RNG
# ------------------------------------------------------------------------------------------------------
def rng_state(device: torch.device) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int, device: torch.device | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.cuda.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------
# resume checkpoints
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointRef:
    stage_index: int
    stage_name: str
    step: int
    path: Path


class CheckpointManager:
    """Writes, finds, prunes and loads resume checkpoints of one run folder (layout in the module docs).

    ``fault`` is a test hook: called with the phase name (``"weights"``, ``"optimizer"``, ``"state"``) while
    a checkpoint is being written; raising there simulates a crash in the middle of a save.
    """

    def __init__(self, run_dir: str | Path, info: DistInfo) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.info = info
        self.fault: Callable[[str], None] | None = None

    # -- paths ------------------------------------------------------------------------------------------
    def stage_dir(self, stage_index: int, stage_name: str) -> Path:
        return self.root / f"s{stage_index:02d}-{stage_name}"

    def path_for(self, stage_index: int, stage_name: str, step: int) -> Path:
        return self.stage_dir(stage_index, stage_name) / f"step-{step:08d}"

    def list(self, stage_index: int | None = None) -> list[CheckpointRef]:
        """Complete checkpoints, oldest first."""
        out: list[CheckpointRef] = []
        if not self.root.is_dir():
            return out
        for sdir in sorted(self.root.iterdir()):
            m = _STAGE_RE.match(sdir.name)
            if not m or not sdir.is_dir():
                continue
            idx = int(m.group(1))
            if stage_index is not None and idx != stage_index:
                continue
            for cdir in sdir.iterdir():
                mm = _STEP_RE.match(cdir.name)
                if mm and (cdir / STATE_FILE).is_file():
                    out.append(CheckpointRef(idx, m.group(2), int(mm.group(1)), cdir))
        return sorted(out, key=lambda r: (r.stage_index, r.step))

    def latest(self, stage_index: int | None = None) -> CheckpointRef | None:
        refs = self.list(stage_index)
        return refs[-1] if refs else None

    def recover(self) -> None:
        """Clean up after a crash during a save: drop temp folders, restore a replaced folder (rank 0)."""
        if not self.info.is_main or not self.root.is_dir():
            return
        for sdir in self.root.iterdir():
            if not sdir.is_dir():
                continue
            for entry in sdir.iterdir():
                name = entry.name
                if not name.startswith("."):
                    continue
                if ".tmp-" in name:
                    log.warning("removing the partial checkpoint %s left by an interrupted save", entry)
                    shutil.rmtree(entry, ignore_errors=True)
                elif ".old-" in name:
                    final = sdir / name[1:].split(".old-")[0]
                    if final.exists():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        log.warning(
                            "restoring %s from %s (a save was interrupted while replacing it)", final, entry
                        )
                        os.replace(entry, final)

    # -- save -------------------------------------------------------------------------------------------
    def save(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        processor: Any,
        stage_index: int,
        stage_name: str,
        step: int,
        parts: Sequence[str],
        trainer_state: dict[str, Any],
        summary: dict[str, Any],
        keep_last: int,
    ) -> Path:
        """Collective: every rank calls it. Rank 0 writes the folder atomically, then prunes old ones."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        t0 = time.perf_counter()
        sd = full_state_dict(model, self.info)
        if self.info.distributed:
            osd = get_optimizer_state_dict(
                model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            osd = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
        rngs = all_gather_objects(rng_state(self.info.device), self.info)
        dst = self.path_for(stage_index, stage_name, step)
        error: BaseException | None = None
        if self.info.is_main:
            try:
                with atomic_dir(dst) as tmp:
                    write_model_folder(tmp / MODEL_DIR, model, sd, processor, parts, {"step": step})
                    self._fault("weights")
                    torch.save(osd, tmp / OPTIMIZER_FILE)
                    self._fault("optimizer")
                    torch.save({**trainer_state, "rng": rngs}, tmp / TRAINER_FILE)
                    self._fault("state")
                    (tmp / STATE_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            except BaseException as exc:  # re-raised on every rank below
                error = exc
        failed = broadcast_object(error is not None, self.info)
        if error is not None:
            raise error
        if failed:
            raise RuntimeError("rank 0 failed to write the checkpoint")
        barrier(self.info)
        if self.info.is_main:
            self.prune(stage_index, keep_last)
            log.info("saved checkpoint %s (%.1f s)", dst, time.perf_counter() - t0)
        return dst

    def _fault(self, phase: str) -> None:
        if self.fault is not None:
            self.fault(phase)

    def prune(self, stage_index: int, keep_last: int) -> None:
        refs = self.list(stage_index)
        for ref in refs[: max(0, len(refs) - keep_last)]:
            shutil.rmtree(ref.path, ignore_errors=True)

    def remove_stage(self, stage_index: int) -> None:
        """Drop a finished stage's resume checkpoints (its output folder supersedes them)."""
        if self.info.is_main and self.root.is_dir():
            for sdir in self.root.glob(f"s{stage_index:02d}-*"):
                shutil.rmtree(sdir, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------------------
    def load_optimizer(self, ref: CheckpointRef, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        osd = torch.load(ref.path / OPTIMIZER_FILE, map_location="cpu", weights_only=True, mmap=True)
        # strict=False: a trainable parameter that never received a gradient (e.g. an encoder's unused
        # post-layernorm) has no optimizer state yet, in the saved run as in this one
        set_optimizer_state_dict(
            model,
            optimizer,
            optim_state_dict=osd,
            options=StateDictOptions(full_state_dict=True, strict=False),
        )

    def load_trainer_state(self, ref: CheckpointRef) -> dict[str, Any]:
        return torch.load(ref.path / TRAINER_FILE, map_location="cpu", weights_only=False)

    def restore_rng(self, state: dict[str, Any], fallback_seed: int) -> None:
        rngs = state.get("rng") or []
        if self.info.rank < len(rngs):
            set_rng_state(rngs[self.info.rank], self.info.device)
        else:
            seed_everything(fallback_seed + self.info.rank, self.info.device)


def stage_output_dir(run_dir: str | Path, stage_name: str) -> Path:
    return Path(run_dir) / "stages" / stage_name / MODEL_DIR


def save_stage_output(
    path: Path,
    model: nn.Module,
    processor: Any,
    parts: Sequence[str],
    info: DistInfo,
    metadata: dict[str, Any],
) -> None:
    """Collective: gather the weights and write the stage's output folder atomically (rank 0)."""
    sd = full_state_dict(model, info)
    if info.is_main:
        with atomic_dir(path) as tmp:
            write_model_folder(tmp, model, sd, processor, parts, metadata)
    barrier(info)


__all__ = [
    "CheckpointManager",
    "CheckpointRef",
    "full_state_dict",
    "load_weights",
    "read_model_info",
    "rng_state",
    "save_stage_output",
    "seed_everything",
    "set_rng_state",
    "stage_output_dir",
    "write_model_folder",
]
