#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels (nvcc, ptxas, headers) into .cuda/ (git-ignored),
# where build.rs finds them. No GPU is needed; they only compile. Running it again when they are
# there does nothing. See DEVELOPERS.md for why every version is pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .cuda/nvidia/cu13/bin/nvcc ] && .cuda/nvidia/cu13/bin/nvcc --version | grep -q "release 13.0"; then
  exit 0
fi
python3 -m pip install --quiet --target .cuda \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
.cuda/nvidia/cu13/bin/nvcc --version | tail -1
