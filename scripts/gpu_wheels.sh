#!/usr/bin/env bash
# The wheels the GPU machine lacks, for Python 3.12 on manylinux x86_64, into .whl/ (or the folder given), so that
# one device call can install seqmem there without a registry (see README, "GPU check").
#
# That machine has its own CUDA build of torch, lightning, torchmetrics, tensorboard, matplotlib, pandas, pyarrow,
# fsspec, huggingface-hub, xxhash, aiohttp, ... (the device tool's KINDS.md lists them), but not jsonargparse,
# datasets or ray. Carried: jsonargparse with the two packages of its [signatures] extra, datasets with the two of
# its requirements missing there; the versions are pyproject.toml's pins and what they resolve to on CPU.
# Not carried: ray[tune]: its wheel alone (79 MB) is over the 64 MiB a device call may carry; nothing the GPU check
# runs imports it (only `seqmem sweep` and tests/test_sweep.py, which that machine then does not collect).
#
#   scripts/gpu_wheels.sh            # -> .whl/ (ignored by git; `carry: [".whl"]` in the device call)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
wheels=(
  jsonargparse==4.53.0
  docstring-parser==0.18.0  # jsonargparse[signatures]
  typeshed-client==2.15.0   # jsonargparse[signatures]
  datasets==5.2.0
  dill==0.4.1               # datasets: dill<0.4.2
  multiprocess==0.70.19     # datasets: multiprocess<0.70.20
)
platforms=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$platform")
done
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
# What each one needs (Requires-Dist without extras): every name must be carried or on the machine already.
for wheel in "$dest"/*.whl; do
  echo "$(basename "$wheel"): $(unzip -p "$wheel" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | cut -d' ' -f2- | tr '\n' ';')"
done
du -ch "$dest"/*.whl | tail -1
