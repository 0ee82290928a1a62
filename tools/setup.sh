#!/usr/bin/env bash
# Installs the Debian 12 packages vrwkv needs to build and test, only those
# that are missing. Run as root (or with sudo available).
set -euo pipefail

packages=(
  g++ cmake make pkg-config           # toolchain
  libdnnl-dev                         # GEMM (oneDNN)
  libjpeg62-turbo-dev libpng-dev      # image decoding
  libopencv-imgproc-dev               # the segmentation pipeline's resizes (OpenCV's, as the official one)
  libzip-dev                          # .pth archives
  zlib1g-dev                          # gzip datasets (Fashion-MNIST)
  nlohmann-json3-dev                  # safetensors headers, configs
  libcli11-dev                        # command line
  libcairo2-dev                       # benchmark plots (PNG, SVG)
  libgtest-dev                        # tests
  dataset-fashion-mnist               # training data of the default model, evaluation, training tests
  pybind11-dev python3-dev            # the Python package (python/, src/python)
  python3-numpy python3-pytest python3-pil  # ... its arrays and its tests
  python3-venv python3-pip python3-setuptools python3-wheel  # ... its offline install (pip install .)
  libopenmpi-dev openmpi-bin          # data-parallel training (mpirun -np N vrwkv train)
)
if [ "${VRWKV_FUZZ:-0}" = 1 ]; then
  packages+=(clang libclang-rt-14-dev)  # libFuzzer targets
fi
if [ "${VRWKV_PYTORCH:-0}" = 1 ]; then
  packages+=(python3-torch libopenblas0-pthread)  # tools/compare_pytorch.py (OpenBLAS as torch's BLAS)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
