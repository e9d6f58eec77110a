#!/usr/bin/env bash
# Installs everything rank1-keras needs on a fresh Debian/Ubuntu machine:
# the embedded Fashion-MNIST data (Debian package) and the Python stack.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python -m pip install -q -e ".[test,data,plots]"
