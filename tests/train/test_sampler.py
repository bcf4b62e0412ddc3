"""Batch planning: deterministic, modality/length grouped, independent of world size and micro-batch size."""

from __future__ import annotations

import numpy as np
import pytest

from vistune.train.sampler import BatchPlan, MicroBatchSampler, total_steps


def _data(n=103, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(10, 2000, n), rng.random(n) < 0.7


@pytest.mark.parametrize("group_by", ["modality_length", "length", "random"])
def test_every_sample_once_per_epoch_and_deterministic(group_by):
    lengths, mm = _data()
    plan = BatchPlan(lengths, mm, 16, seed=3, group_by=group_by)
    assert len(plan) == 7  # ceil(103 / 16)
    for epoch in (0, 1):
        batches = plan.epoch_batches(epoch)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(103))
        assert [len(b) for b in batches].count(16) == 6  # one partial batch, nothing dropped
        again = BatchPlan(lengths, mm, 16, seed=3, group_by=group_by).epoch_batches(epoch)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    assert not all(
        np.array_equal(a, b) for a, b in zip(plan.epoch_batches(0), plan.epoch_batches(1), strict=True)
    )
    other = BatchPlan(lengths, mm, 16, seed=4, group_by=group_by).epoch_batches(0)
    assert not all(np.array_equal(a, b) for a, b in zip(plan.epoch_batches(0), other, strict=True))


def test_modality_grouping_and_length_sorting():
    lengths, mm = _data(200)
    plan = BatchPlan(lengths, mm, 16, seed=0, group_by="modality_length")
    batches = plan.epoch_batches(0)
    full = [b for b in batches if len(b) == 16]
    mixed = [b for b in batches if len(set(mm[b].tolist())) > 1]
    # every full batch is single-modality except possibly the merged leftovers, which come last
    assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1] or mixed[0] is batches[-2])
    assert sum(len(set(mm[b].tolist())) == 1 for b in full) >= len(full) - 1
    for b in batches:  # longest first inside a batch -> micro-batches of similar length
        assert np.all(np.diff(lengths[b]) <= 0)


def test_length_grouping_narrows_batches():
    lengths, mm = _data(512)
    spread = {}
    for g in ("length", "random"):
        bs = BatchPlan(lengths, mm, 16, seed=0, group_by=g).epoch_batches(0)
        spread[g] = np.mean([lengths[b].max() - lengths[b].min() for b in bs])
    assert spread["length"] < 0.3 * spread["random"]


def test_micro_batches_partition_the_global_batch_for_any_layout():
    lengths, mm = _data(64)
    plan = BatchPlan(lengths, mm, 16, seed=1)
    for step in range(len(plan)):
        want = sorted(plan.global_batch(step).tolist())
        for world, accum in ((1, 16), (1, 1), (2, 4), (4, 2), (8, 1)):
            got = [i for r in range(world) for mb in plan.micro_batches(step, world, r, accum) for i in mb]
            assert sorted(got) == want
            sizes = [len(mb) for r in range(world) for mb in plan.micro_batches(step, world, r, accum)]
            assert set(sizes) == {16 // (world * accum)}


def test_partial_last_batch_splits_evenly_and_may_leave_empty_micro_batches():
    plan = BatchPlan(np.arange(10), np.ones(10, bool), 8, seed=0)
    last = plan.micro_batches(1, world_size=2, rank=0, accumulation=2) + plan.micro_batches(1, 2, 1, 2)
    assert sorted(len(m) for m in last) == [0, 0, 1, 1]


def test_resuming_mid_epoch_reproduces_the_order():
    lengths, mm = _data(100)
    plan = BatchPlan(lengths, mm, 8, seed=2)
    full = list(MicroBatchSampler(plan, 0, 30, 2, 1, 2))
    resumed = list(MicroBatchSampler(BatchPlan(lengths, mm, 8, seed=2), 17, 30, 2, 1, 2))
    assert resumed == full[17 * 2 :]
    assert len(MicroBatchSampler(plan, 17, 30, 2, 1, 2)) == 26


def test_total_steps_and_errors():
    plan = BatchPlan(np.ones(10), np.ones(10, bool), 4)
    assert total_steps(plan, 1.0, None) == 3 and total_steps(plan, 2.5, None) == 8
    assert total_steps(plan, 1.0, 5) == 5
    with pytest.raises(ValueError, match="empty dataset"):
        BatchPlan(np.zeros(0), np.zeros(0, bool), 4)
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        plan.micro_batches(0, 2, 2, 1)
