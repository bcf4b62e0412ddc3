"""Spike detector, FLOPs formula (vision included), peak FLOP/s table, metrics file rewind, loss plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vistune.train.monitor import FlopsModel, MetricsLog, SpikeDetector, peak_flops, plot_loss, read_metrics


def test_spike_detector_flags_jumps_not_noise():
    rng = np.random.default_rng(0)
    det = SpikeDetector(window=50, threshold=6.0, min_history=10)
    losses = list(3.0 - 0.01 * np.arange(200) * 0.1 + rng.normal(0, 0.02, 200))
    losses[120] += 1.0  # a spike
    losses[150] -= 1.0  # a sudden drop is not a spike
    flags = [det.update(x)[0] for x in losses]
    assert [i for i, f in enumerate(flags) if f] == [120]
    # no verdict before min_history, non-finite values ignored
    d2 = SpikeDetector(window=10, threshold=3.0, min_history=5)
    assert [d2.update(v) for v in (1.0, 1.0, 1.0, 1.0)] == [(False, None)] * 4
    assert d2.update(float("nan")) == (False, None) and len(d2.history) == 4
    # a flat history does not make tiny noise a spike (scale floor), a real jump still is
    d3 = SpikeDetector(window=10, threshold=6.0, min_history=5)
    for _ in range(6):
        d3.update(2.0)
    assert not d3.update(2.001)[0] and d3.update(2.5)[0]
    # robust z-score value: median 2.0, MAD-based scale floored at 1e-3*2+1e-8
    assert d3.score(2.004) == pytest.approx(0.004 / (2e-3 + 1e-8), rel=1e-3)
    d4 = SpikeDetector(window=10, threshold=6.0, min_history=5)
    d4.load_state_dict(d3.state_dict())
    assert list(d4.history) == list(d3.history)


def test_flops_formula_matches_hand_count():
    from vistune import load_pretrained

    torch.manual_seed(0)
    model, _ = load_pretrained("tiny")
    f = FlopsModel(model, ["vision", "connector", "llm", "newline"])
    # tiny-qwen2: 2 layers, hidden 64, 4 heads (head_dim 16), kv 2 heads, mlp 128, vocab 1024 (+special rows)
    per_layer = 64 * 64 + 2 * (64 * 32) + 64 * 64 + 3 * 64 * 128  # q, k+v (GQA), o, gate/up/down
    assert f.n_llm == 2 * per_layer
    assert f.d_attn == 64 and f.llm_layers == 2
    assert f.n_head == model.llm.get_output_embeddings().weight.numel()
    # tiny-siglip: patch conv 3*4*4*64, 2 layers of (4*64*64 attn + 2*64*128 mlp), 8x8 patches
    assert f.n_vision == 3 * 16 * 64 + 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert f.patches == 64 and f.vision_layers == 2 and f.d_vision == 64
    assert f.n_connector == 64 * 64 + 64 * 64
    seq, views, sup = [100, 60], 5, 12
    llm = 6 * f.n_llm * 160 + 12 * 2 * 64 * (100**2 + 60**2)
    vis = 3 * (2 * f.n_vision * 64 + 4 * 2 * 64 * 64**2) * views
    con = 3 * 2 * f.n_connector * 64 * views
    head = 6 * f.n_head * sup
    assert f.batch_flops(seq, views, sup) == pytest.approx(llm + vis + con + head)
    # Stage-1: frozen LLM still runs a backward for input gradients (4N), frozen encoder forward only
    s1 = FlopsModel(model, ["connector"])
    assert (s1.c_llm, s1.a_llm, s1.c_head, s1.c_vision, s1.c_connector) == (4, 12, 4, 1, 3)
    frozen_vision = FlopsModel(model, ["llm", "connector"])
    assert frozen_vision.c_vision == 1 and frozen_vision.c_llm == 6
    assert s1.batch_flops(seq, views, sup) < f.batch_flops(seq, views, sup)


def test_peak_flops(monkeypatch):
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setenv("VISTUNE_PEAK_TFLOPS", "989")
    assert peak_flops(torch.device("cpu")) == 989e12


def test_metrics_log_rewind_and_plot(tmp_path):
    m = MetricsLog(tmp_path / "metrics.jsonl")
    for stage in (0, 1):
        for step in range(1, 6):
            m.write(
                {
                    "stage": f"s{stage}",
                    "stage_index": stage,
                    "step": step,
                    "loss": 5.0 - step * 0.1,
                    "spike": step == 3,
                }
            )
    m.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "s1", "stage_index": 1, "st')  # a line cut by a crash
    m.rewind(1, 2)
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["stage_index"], r["step"]) for r in recs] == [(0, i) for i in range(1, 6)] + [(1, 1), (1, 2)]
    m.write({"stage": "s1", "stage_index": 1, "step": 3, "loss": 1.0})
    m.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    png = plot_loss(
        [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["stage_index"] == 0]
        + [{"step": 6, "loss": float("nan"), "skipped_step": True}],
        tmp_path / "loss.png",
        "t",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss([], tmp_path / "none.png") is None
