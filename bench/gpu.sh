#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one run (427 s on one H100, 2026-11-26).
#   bash bench/gpu.sh [OUT_DIR]        (PYTHON=python3 to name the interpreter)
# Each benchmark writes its own JSON into OUT_DIR as soon as it finishes (a run cut short keeps what it
# measured); at the end they are merged into OUT_DIR/bench-gpu.json. Order: most important first.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python}"
: > "$out/stderr.log"
run() {  # name, then the command; a failing benchmark is recorded and the rest still run
  local name="$1"; shift
  local t0=$SECONDS
  echo "== $name" >> "$out/stderr.log"
  if "$@" > "$out/$name.json" 2>> "$out/stderr.log"; then
    echo "[gpu.sh] $name: ok in $((SECONDS - t0)) s"
  else
    echo "[gpu.sh] $name: FAILED after $((SECONDS - t0)) s"; tail -20 "$out/stderr.log"
  fi
}
"$py" -c "import torch, transformers; print('[gpu.sh]', torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
run train_b2 "$py" bench/train_step.py --device cuda --steps 3 --warmup 1 --profile 12 \
  --modes transformers_b2,vistune_b2,vistune_packed,transformers_b1
run gen_b16 "$py" bench/generate.py --device cuda --batch 16 --new-tokens 64
run cost "$py" bench/cost_table.py --device cuda --steps 2
run gen_b4 "$py" bench/generate.py --device cuda --batch 4 --new-tokens 64
run train_ckpt "$py" bench/train_step.py --device cuda --steps 2 --warmup 1 --grad-ckpt \
  --modes transformers_b2,vistune_b2,vistune_packed
"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
res = {}
for f in sorted(out.glob("*.json")):
    text = f.read_text()
    if f.name != "bench-gpu.json" and "{" in text:
        res[f.stem] = json.loads(text[text.index("{"):])
(out / "bench-gpu.json").write_text(json.dumps(res, indent=2) + "\n")
print(f"[gpu.sh] wrote {out / 'bench-gpu.json'} ({', '.join(res)})")
PY
