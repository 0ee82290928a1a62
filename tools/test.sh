#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
ctest --test-dir build --output-on-failure -j2
# The Python package's suite is one ctest entry; its own count, from pytest's summary line.
summary=$(grep -hE "^[0-9]+ passed" build/Testing/Temporary/LastTest.log | tail -n 1 || true)
echo "python (pytest, one ctest entry): ${summary:-no pytest summary found (the package was not built)}"
