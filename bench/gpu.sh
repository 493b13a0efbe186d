#!/usr/bin/env bash
# The paper preset on a GPU, end to end (issue 23): train on a ~3,000-image demo split with
# AMP, score, and print training images/s, inference ms/image (batch 1) and images/s (batch
# 32), peak GPU memory and the ratio per structure. No setup beyond `make install`.
#   bench/gpu.sh                      # on a GPU machine
#   GPU_BENCH_TINY=1 bench/gpu.sh     # anywhere: the same steps on the CPU at a tiny size
# Extra arguments go to bench/gpu.py (--epochs N, --patients N, --images-per-side 7-8).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python="$root/.venv/bin/python"
if [ ! -x "$python" ]; then
  echo "no $python: run 'make install' in $root first" >&2
  exit 2
fi
cd "$here"
exec "$python" gpu.py "$@"
