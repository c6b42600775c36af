#!/usr/bin/env bash
# The wheels that scripts/bench_gpu.sh installs on a GPU machine without network: the packages
# of setup.cfg's install_requires (and theirs) that its image lacks, for CPython 3.12 on
# x86-64 Linux. Its image has torch, torchvision, pytorch-lightning, torchmetrics, numpy, scipy,
# opencv-python-headless, pillow, pyyaml and tqdm. wandb is left out: bench_gpu.sh logs to CSV.
# cityscapesScripts' own requirements are left out too: uda imports only its label table.
#     bash scripts/gpu_wheels.sh [DIR]      (default: .whl, which git should ignore)
set -euo pipefail
dir=${1:-.whl}
mkdir -p "$dir"
for pkg in albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 \
           annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
           stringzilla==5.3.2 simsimd==6.5.16 omegaconf==2.4.0 cityscapesScripts==2.3.0 \
           segmentation-models-pytorch==0.6.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir" "$pkg"
done
du -sh "$dir"
