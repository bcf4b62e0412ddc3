"""Run the tiny CPU benchmarks and print the Markdown tables of docs/performance.md.

    python bench/docs_tables.py              # tiny configuration, CPU (about a minute)
    python bench/docs_tables.py --steps 30   # more timed steps for steadier ratios

Each table comes from one benchmark process (vistune and transformers side by side, same weights and samples).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out[out.index("{") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per mode")
    ap.add_argument("--repeats", type=int, default=3, help="timed generation repeats")
    a = ap.parse_args()
    ts = _run("train_step.py", "--tiny", "--steps", str(a.steps), "--warmup", "2")
    gen = _run("generate.py", "--tiny", "--batch", "16", "--new-tokens", "32", "--repeats", str(a.repeats))
    cost = _run("cost_table.py", "--tiny", "--steps", str(max(2, a.steps // 2)))
    print(f"device: {ts['device']}, torch {ts['torch']}\n")
    print("| mode | step (s) | real tokens/s | × transformers b2 | padding |")
    print("|---|---:|---:|---:|---:|")
    for k, r in ts["modes"].items():
        ratio = r.get("ratio_vs_transformers_b2")
        print(
            f"| {k} | {r['step_s']:.4f} | {r['real_tokens_per_s']:.0f} | {ratio:.2f} | {r['padding_fraction']:.1%} |"
        )
    print("\n| variant | time (s) | new tokens/s | × transformers | identical tokens |")
    print("|---|---:|---:|---:|:-:|")
    for k, r in gen["variants"].items():
        ratio = r.get("ratio_vs_transformers", 1.0)
        print(
            f"| {k} | {r['s']:.4f} | {r['new_tokens_per_s']:.0f} | {ratio:.2f} | {r.get('identical_tokens', '-')} |"
        )
    print("\n| max grids | max tokens | visual tokens / sample | step (s) | step ratio | study time ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for r in cost["rows"]:
        print(
            f"| {r['max_grids']} | {r['max_tokens']} | {r['visual_tokens_per_sample']} | {r['step_s']:.4f} "
            f"| {r['step_ratio']:.2f} | {r['study_ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
