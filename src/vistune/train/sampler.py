"""Deterministic, resumable batch planning: epoch order -> global batches -> micro-batches per rank.

The plan is a pure function of ``(seed, epoch, global_batch_size, lengths, modalities, group_by)``. It does
**not** depend on the world size or the micro-batch size: every configuration that trains with the same
global batch sees the same samples in every optimizer step, so (with the loss normalised by supervised
tokens) 1 rank == N ranks and micro 1 x accum 4 == micro 4 x accum 1 up to float rounding. Resuming at
step ``k`` recomputes the plan and continues from global batch ``k`` — no sampler state to save.

Grouping (``group_by``):

* ``modality_length`` (reference ``--group_by_modality_length``): multimodal (image/video) and text-only
  samples are shuffled separately and cut into global batches of one modality; the two leftovers are merged
  into the last batch(es); full batches are shuffled and the leftover batch(es) come last. Inside a batch the
  samples are sorted by length (longest first) before being split into micro-batches, so each micro-batch
  holds similar lengths (little padding) and micro-batches of one accumulation round have similar cost on all
  ranks.
* ``length``: one pool; megabatches of ``8 x global batch`` are sorted by length and cut into global batches
  (so a batch spans a narrow length range), whose order is then shuffled (the partial batch stays last).
* ``random``: a plain shuffle cut into global batches; no sorting.

The last global batch of an epoch may be partial (no sample is dropped). It is split into as many
micro-batches as usual with sizes differing by at most one; some may be empty (the trainer runs a dummy
micro-batch there under data parallelism).

Split of one global batch: ``np.array_split`` into ``world x accum`` chunks; chunk ``k`` goes to
accumulation step ``k // world`` of rank ``k % world``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np

GroupBy = Literal["modality_length", "length", "random"]


class BatchPlan:
    """Which dataset indices form each global batch of each epoch, and how they split into micro-batches."""

    def __init__(
        self,
        lengths: np.ndarray,
        multimodal: np.ndarray,
        global_batch_size: int,
        seed: int = 0,
        group_by: GroupBy = "modality_length",
        megabatch_mult: int = 8,
    ) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        multimodal = np.asarray(multimodal, dtype=bool)
        if lengths.shape != multimodal.shape or lengths.ndim != 1:
            raise ValueError("lengths and multimodal must be 1-D arrays of the same length")
        if len(lengths) == 0:
            raise ValueError("cannot plan batches over an empty dataset")
        if global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if group_by not in ("modality_length", "length", "random"):
            raise ValueError(f"unknown group_by {group_by!r}")
        self.lengths = lengths
        self.multimodal = multimodal
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.group_by = group_by
        self.megabatch_mult = megabatch_mult
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        """Global batches per epoch (the last may be partial)."""
        return math.ceil(len(self.lengths) / self.global_batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    # -- one epoch ------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        B = self.global_batch_size
        if self.group_by == "modality_length":
            batches = self._modality_batches(rng)
        elif self.group_by == "length":
            batches = self._length_batches(rng)
        else:
            perm = rng.permutation(len(self.lengths))
            batches = [perm[i : i + B] for i in range(0, len(perm), B)]
        assert sum(len(b) for b in batches) == len(self.lengths)
        self._cache = (epoch, batches)
        return batches

    def _sort_desc(self, idx: np.ndarray) -> np.ndarray:
        # stable sort on (-length) keeps the drawn order among equal lengths
        return idx[np.argsort(-self.lengths[idx], kind="stable")]

    def _modality_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        B = self.global_batch_size
        full: list[np.ndarray] = []
        leftovers: list[np.ndarray] = []
        for group in (np.flatnonzero(self.multimodal), np.flatnonzero(~self.multimodal)):
            perm = group[rng.permutation(len(group))]
            n_full = len(perm) // B
            full.extend(perm[i * B : (i + 1) * B] for i in range(n_full))
            leftovers.append(perm[n_full * B :])
        rest = np.concatenate(leftovers)
        order = rng.permutation(len(full))
        batches = [full[i] for i in order]
        batches.extend(rest[i : i + B] for i in range(0, len(rest), B))
        return [self._sort_desc(b) for b in batches]

    def _length_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        B = self.global_batch_size
        perm = rng.permutation(len(self.lengths))
        M = B * self.megabatch_mult
        batches: list[np.ndarray] = []
        for i in range(0, len(perm), M):
            mega = self._sort_desc(perm[i : i + M])
            batches.extend(mega[j : j + B] for j in range(0, len(mega), B))
        if len(batches[-1]) < B:
            last = batches.pop()
            batches = [batches[i] for i in rng.permutation(len(batches))] + [last]
        else:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    # -- steps ----------------------------------------------------------------------------------------------
    def global_batch(self, step: int) -> np.ndarray:
        """The samples of optimizer step ``step`` (0-based, counted from the start of the stage)."""
        epoch, k = divmod(step, len(self))
        return self.epoch_batches(epoch)[k]

    def micro_batches(self, step: int, world_size: int, rank: int, accumulation: int) -> list[list[int]]:
        """The ``accumulation`` micro-batches of ``rank`` in step ``step`` (some may be empty)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        chunks = np.array_split(self.global_batch(step), world_size * accumulation)
        return [chunks[a * world_size + rank].tolist() for a in range(accumulation)]

    def iter_micro_batches(
        self, start_step: int, end_step: int, world_size: int, rank: int, accumulation: int
    ) -> Iterator[list[int]]:
        """Micro-batches of steps ``start_step .. end_step-1`` in order (``accumulation`` per step)."""
        for step in range(start_step, end_step):
            yield from self.micro_batches(step, world_size, rank, accumulation)


class MicroBatchSampler:
    """A ``batch_sampler`` for :class:`torch.utils.data.DataLoader` over a slice of steps of a plan."""

    def __init__(
        self, plan: BatchPlan, start_step: int, end_step: int, world_size: int, rank: int, accumulation: int
    ) -> None:
        self.plan = plan
        self.start_step = start_step
        self.end_step = end_step
        self.world_size = world_size
        self.rank = rank
        self.accumulation = accumulation

    def __iter__(self) -> Iterator[list[int]]:
        return self.plan.iter_micro_batches(
            self.start_step, self.end_step, self.world_size, self.rank, self.accumulation
        )

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.accumulation


def total_steps(plan: BatchPlan, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps of a stage: ``max_steps`` if given, else ``ceil(epochs x batches per epoch)``."""
    if max_steps is not None:
        return int(max_steps)
    return max(1, math.ceil(epochs * len(plan)))


__all__ = ["BatchPlan", "GroupBy", "MicroBatchSampler", "total_steps"]
