"""The benchmarks must keep running (they are not timed here; numbers live in docs/performance.md)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_train_step_bench_tiny(capsys):
    import train_step

    out = train_step.main(
        ["--tiny", "--steps", "1", "--warmup", "0", "--modes", "transformers_b2,vistune_b2,vistune_packed"]
    )
    assert set(out["modes"]) == {"transformers_b2", "vistune_b2", "vistune_packed"}
    assert out["modes"]["vistune_packed"]["padding_fraction"] == 0.0
    assert all(m["real_tokens_per_s"] > 0 for m in out["modes"].values())


@pytest.mark.slow
def test_generate_bench_tiny_matches_transformers(capsys):
    import generate

    out = generate.main(["--tiny", "--batch", "3", "--new-tokens", "8", "--repeats", "1"])
    for name in ("vistune_dynamic", "vistune_static"):
        assert out["variants"][name]["identical_tokens"], name


@pytest.mark.slow
def test_cost_table_bench_tiny(capsys):
    import cost_table

    out = cost_table.main(["--tiny", "--steps", "1", "--warmup", "0"])
    rows = out["rows"]
    assert len(rows) == 6 and rows[0]["step_ratio"] == 1.0
    # more tokens cost more: the (16+1)T setting has the most visual tokens
    assert rows[-1]["visual_tokens_per_sample"] == max(r["visual_tokens_per_sample"] for r in rows)
