#!/usr/bin/env bash
# Wheel-install check: build the wheel, install it into a clean venv (no system site-packages, no
# PYTHONPATH) beside a CPU torch, and run the console scripts from a directory outside the repository,
# with a fresh HOME: the shipped configs and demo weights must come from the installed package.
#   bash .ci/wheel_check.sh            (BIDL_WHEEL_TORCH=2.13.0 picks the torch pin; KEEP=1 keeps the dir)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bidl-wheel-check.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
CFG=clif3fc3dm_itout-b16x1-dvsglyphs
say() { printf '\n== [%ss] %s\n' "$SECONDS" "$*"; }

say "build the wheel"
python -m pip wheel "$ROOT" --no-deps -w "$WORK/dist" -q
WHEEL=$(ls "$WORK"/dist/bidl_grid-*.whl)
python - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
cfgs = [n for n in names if n.startswith("bidl_models/configs/") and n.endswith(".py")]
pths = [n for n in names if n.startswith("bidl_models/weights/") and n.endswith(".pth")]
assert cfgs and pths, f"wheel lacks package data: {len(cfgs)} configs, {len(pths)} weights"
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, {len(cfgs)} configs, {len(pths)} weights")
PY

say "clean venv: the wheel + torch==${BIDL_WHEEL_TORCH:-2.13.0}"
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
env -u PYTHONPATH "$VPY" -m pip install -q "$WHEEL" "torch==${BIDL_WHEEL_TORCH:-2.13.0}"
env -u PYTHONPATH "$VPY" -m pip list 2>/dev/null | grep -Ei '^(bidl-grid|torch|ray) '

mkdir -p "$WORK/outside" "$WORK/home"
cd "$WORK/outside"
export HOME="$WORK/home" BIDL_ARTIFACT_STORE="$WORK/store" RAY_TMPDIR="${RAY_TMPDIR:-/tmp/ray}"
unset PYTHONPATH BIDL_CONFIG_ROOT
BIN="$WORK/venv/bin"

say "imports come from the venv"
"$VPY" -c "import bidl_models, sys; p = bidl_models.__file__; print(p); sys.exit(0 if p.startswith('$WORK/venv/') else 1)"

say "every console script answers --help"
for s in bidl-train bidl-test bidl-compile bidl-run bidl-plan; do
    "$BIN/$s" --help > /dev/null || { echo "$s --help failed"; exit 1; }
done

say "bidl-plan --config $CFG --grid 3x2"
"$BIN/bidl-plan" --config "$CFG" --grid 3x2 > plan.txt
head -3 plan.txt

CKPT=$("$VPY" -c "from bidl_models.checkpoint import shipped_weights; print(shipped_weights('$CFG'))")
case "$CKPT" in "$WORK/venv/"*) ;; *) echo "shipped weights not in the venv: $CKPT"; exit 1;; esac

say "bidl-compile --config $CFG --grid 1x1 (demo weights from the package)"
"$BIN/bidl-compile" --config "$CFG" --grid 1x1 --quiet --checkpoint "$CKPT" --out compiled | tail -2

say "bidl-test --config $CFG (shipped weights, 16 samples)"
"$BIN/bidl-test" --config "$CFG" --checkpoint "$CKPT" --limit 16 --no-progress --out test.json | tail -3
"$VPY" -c "import json; print(str(json.load(open('test.json')))[:400])"

say "the default job: bidl-run --grid 3x2"
"$BIN/bidl-run" --grid 3x2 --json run.json > run.log 2>&1 || { tail -40 run.log; exit 1; }
grep -E '^(config|samples|accuracy|outputs equal|start-up)' run.log
grep -Eq '^outputs equal reference: ([0-9]+)/\1 samples bit-exact' run.log

say "bidl-test exits 2 with one line on a config that does not exist"
set +e
"$BIN/bidl-test" --config no_such_config --checkpoint none.pth 2> err.txt; rc=$?
set -e
cat err.txt
[ "$rc" = 2 ] && [ "$(wc -l < err.txt)" = 1 ]

say "wheel check passed"
