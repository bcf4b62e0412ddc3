"""Trainable parts, optimizer groups (per-part LR, no decay on norms/biases) and the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.conftest import make_recipe, stage_dict
from vistune.train.optim import (
    apply_lr,
    build_optimizer,
    lr_factor,
    param_groups,
    set_trainable,
    warmup_steps,
)


@pytest.fixture(scope="module")
def model():
    from vistune import load_pretrained

    torch.manual_seed(0)
    return load_pretrained("tiny")[0]


def test_set_trainable_freezes_everything_else(model):
    counts = set_trainable(model, ["connector", "newline"])
    total = sum(p.numel() for p in model.parameters())
    assert sum(c["trainable"] + c["frozen"] for c in counts.values()) == total
    assert counts["connector"]["trainable"] == sum(p.numel() for p in model.connector.parameters())
    assert counts["llm"]["trainable"] == 0 and counts["vision"]["trainable"] == 0
    assert counts["newline"]["trainable"] == model.image_newline.numel()
    assert all(not p.requires_grad for p in model.llm.parameters())
    assert all(p.requires_grad for p in model.connector.parameters())
    with pytest.raises(ValueError, match="unknown part"):
        set_trainable(model, ["decoder"])


def test_groups_per_part_lr_and_no_decay_rule(model, toy_data):
    stage = make_recipe(
        [
            stage_dict(
                toy_data,
                lr={"llm": 2e-5, "vision": 2e-6, "connector": 1e-4, "newline": 3e-5},
                weight_decay=0.1,
            )
        ]
    ).stages[0]
    set_trainable(model, ["vision", "connector", "llm", "newline"])
    groups = {g["name"]: g for g in param_groups(model, stage)}
    assert set(groups) == {
        "vision/decay",
        "vision/no_decay",
        "connector/decay",
        "connector/no_decay",
        "llm/decay",
        "llm/no_decay",
        "newline/no_decay",
    }
    lrs = {g["part"]: g["lr"] for g in groups.values()}
    assert lrs == {"llm": 2e-5, "vision": 2e-6, "connector": 1e-4, "newline": 3e-5}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups.values():
        got = {names[id(p)] for p in g["params"]}
        assert all(model.part_of(n) == g["part"] for n in got)
        if g["name"].endswith("no_decay"):
            assert g["weight_decay"] == 0.0
            assert all(p.ndim < 2 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in g["params"])
    no_decay_names = {names[id(p)] for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]}
    # biases, every norm weight (LayerNorm in the encoder, RMSNorm in Qwen2) and the newline vector
    assert "connector.linear_1.bias" in no_decay_names and "image_newline" in no_decay_names
    assert any("post_attention_layernorm" in n for n in no_decay_names)
    assert any("layer_norm1" in n for n in no_decay_names)
    assert "llm.model.norm.weight" in no_decay_names
    assert not any(n.endswith("q_proj.weight") for n in no_decay_names)
    # every trainable parameter is in exactly one group (tied embeddings counted once)
    in_groups = [id(p) for g in groups.values() for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) == sum(1 for p in model.parameters() if p.requires_grad)
    opt = build_optimizer(model, stage)
    lrs_now = apply_lr(opt, 0.5)
    assert lrs_now["vision"] == pytest.approx(1e-6) and lrs_now["llm"] == pytest.approx(1e-5)


def test_lr_schedule_values():
    total, warm = 10, 2
    f = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert f[0] == pytest.approx(1 / 3) and f[1] == pytest.approx(2 / 3)
    assert f[2] == pytest.approx(1.0)  # the first step after warmup runs at the peak
    assert f[-1] == pytest.approx(0.0)  # cosine reaches the floor at the last step
    # midpoint of the cosine part: progress (6-2)/(10-2-1)=4/7
    assert f[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 7)))
    assert all(a >= b for a, b in zip(f[2:], f[3:], strict=False))
    lin = [lr_factor(s, total, warm, "linear", min_ratio=0.1) for s in range(total)]
    assert lin[2] == pytest.approx(1.0) and lin[-1] == pytest.approx(0.1)
    assert lin[5] == pytest.approx(0.1 + 0.9 * (1 - 3 / 7))
    assert [lr_factor(s, total, 0, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 1, 0, "cosine") == 1.0  # a one-step stage still updates


def test_warmup_steps_rounding(toy_data):
    st = make_recipe([stage_dict(toy_data, warmup_ratio=0.03)]).stages[0]
    assert warmup_steps(st, 100) == 3 and warmup_steps(st, 101) == 4 and warmup_steps(st, 10) == 1
    st2 = make_recipe([stage_dict(toy_data, warmup_steps=50)]).stages[0]
    assert warmup_steps(st2, 20) == 20
