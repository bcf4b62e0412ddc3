#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one run (< 6 minutes on one H100/H200); writes one JSON file.
#   bash bench/gpu.sh [OUT.json]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu.json}"
tmp="$(mktemp -d)"
export PYTHONUNBUFFERED=1
python bench/train_step.py --device cuda --steps 3 --warmup 1 \
  --modes transformers_b2,vistune_b2,vistune_packed,transformers_b1 > "$tmp/train_b2.json"
python bench/train_step.py --device cuda --steps 2 --warmup 1 --grad-ckpt \
  --modes transformers_b2,vistune_b2,vistune_packed > "$tmp/train_ckpt.json"
python bench/generate.py --device cuda --batch 4 --new-tokens 64 > "$tmp/gen_b4.json"
python bench/generate.py --device cuda --batch 16 --new-tokens 64 > "$tmp/gen_b16.json"
python bench/cost_table.py --device cuda --steps 2 > "$tmp/cost.json"
python - "$tmp" "$out" <<'PY'
import json, pathlib, sys
tmp, out = pathlib.Path(sys.argv[1]), sys.argv[2]
res = {}
for f in sorted(tmp.glob("*.json")):
    text = f.read_text()
    res[f.stem] = json.loads(text[text.index("{"):])
pathlib.Path(out).write_text(json.dumps(res, indent=2) + "\n")
print(f"wrote {out}")
PY
