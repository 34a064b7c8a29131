#!/usr/bin/env bash
# Set up padnet on a fresh machine: a virtual environment in .venv with padnet and its extras (vision,
# export: ONNX + onnxruntime, nlp: transformers + accelerate + the offline MiniLM encoder and Rotten Tomatoes
# sentences, lightning: the Lightning callback, dev: tests and import contracts, docs: the documentation site),
# PyTorch 2.13.0 (CPU build) pinned through constraints.txt, and the Fashion-MNIST data
# (Debian package dataset-fashion-mnist where apt is available, otherwise a checked download).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[vision,export,nlp,lightning,dev,docs]"

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/t10k-labels-idx1-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } \
            || echo "setup: apt could not install dataset-fashion-mnist; downloading instead" >&2
    fi
fi
# finds the Debian files, or downloads the official ones into ~/.cache/padnet and checks their SHA-256
.venv/bin/padnet data fashion-mnist --download
echo "setup: done (.venv ready; run '.venv/bin/padnet --help')"
