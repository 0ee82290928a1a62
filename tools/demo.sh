#!/usr/bin/env bash
# Installs what is missing, builds, and classifies the bundled sample images
# with the VRWKV-T-shaped checkpoint of ../shared/golden (random weights: the
# classes are meaningless, the pipeline is the real one).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target vrwkv_cli
build/vrwkv classify --model ../shared/golden/vrwkv_t_224_b2.pth data/samples/rocket.jpg data/samples/text.png
