#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with shufflenet installed (editable).
#   ./setup.sh          for training: also installs Debian's Fashion-MNIST where apt-get exists
#   ./setup.sh --test   for the test suite: adds pytest and ruff, no dataset needed
# Both install the deploy extras (ONNX, ONNX Runtime, OpenVINO) for `shufflenet export` and `bench`.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--test" ]; then
    extras="[test,deploy]"
else
    extras="[deploy]"
    if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        # The real data set, 60k/10k images; without it training falls back to torchvision's download.
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } \
            || echo "setup: could not install dataset-fashion-mnist; training will try torchvision's download"
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: done; activate with: . .venv/bin/activate"
