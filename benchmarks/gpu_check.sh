#!/usr/bin/env bash
# The first run on a GPU, one command: a Qwen3-8B-shaped random bf16 model built on the card (no
# download), losses vs float32 references, tokens/s, MFU, peak memory, swap and load times, Track A
# with the vision-feature cache, and the longest sequence without an out-of-memory retry.
# Writes one JSON file (benchmarks/results/gpu_check_<card>.json unless --out) and prints it.
#
#   bash benchmarks/gpu_check.sh                  # CUDA machine, under 8 minutes on one H100
#   bash benchmarks/gpu_check.sh --preset tiny    # toy sizes on the CPU, seconds (CI)
#
# Python: $PYTHON, else the checkout's .venv, else python3. It needs a CUDA build of torch for the
# GPU preset (`make venv` pins the CPU wheel: TORCH_PIN=torch==<version> with a CUDA index instead).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
