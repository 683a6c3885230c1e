#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with shufflenet installed (editable).
#   ./setup.sh          for training: also installs Debian's Fashion-MNIST where apt-get exists
#   ./setup.sh --test   for the test suite: adds pytest and ruff, no dataset needed; where apt-get exists
#                       also an aarch64 cross compiler and qemu-user, to test the engine's ARM build
# Both install the deploy extras (ONNX, ONNX Runtime, OpenVINO) for `shufflenet export` and `bench`.
set -euo pipefail
cd "$(dirname "$0")"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ "${1:-}" = "--test" ]; then
    extras="[test,deploy]"
    if command -v apt-get >/dev/null 2>&1 && ! { command -v aarch64-linux-gnu-gcc && command -v qemu-aarch64; } >/dev/null; then
        # Without them the tests of the engine's aarch64 build skip, saying why.
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user; } >/dev/null \
            || echo "setup: could not install gcc-aarch64-linux-gnu and qemu-user; the ARM engine tests will skip"
    fi
else
    extras="[deploy]"
    if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
        # The real data set, 60k/10k images; without it training falls back to torchvision's download.
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } \
            || echo "setup: could not install dataset-fashion-mnist; training will try torchvision's download"
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: done; activate with: . .venv/bin/activate"
