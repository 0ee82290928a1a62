#!/usr/bin/env bash
# Installs what is missing, builds, and classifies the bundled Fashion-MNIST
# sample images with the bundled default model (trained by vrwkv itself,
# docs/TRAINING.md), then evaluates it on the first 1000 test images.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target vrwkv_cli
build/vrwkv classify --topk 3 data/samples/fashion/*.png
build/vrwkv eval --data fashion-mnist:test --limit 1000
