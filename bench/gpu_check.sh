#!/usr/bin/env bash
# One GPU check on a CUDA machine (under 10 minutes): writes bench/results/gpu_check.json; see docs/performance.md.
cd "$(dirname "$0")/.." && PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout --kill-after=15 570 "${PYTHON:-python}" bench/gpu_check.py --out bench/results/gpu_check.json "$@"
