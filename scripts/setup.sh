#!/usr/bin/env bash
# Installs everything rank1-keras needs on a fresh Debian/Ubuntu machine:
# the embedded Fashion-MNIST data (Debian package) and the Python stack;
# `bash scripts/setup.sh --tests` adds what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
# `--tests`: also what the test suite needs (pytest, edward2, the JAX and PyTorch backends).
if [ "${1:-}" != "--tests" ]; then
  python -m pip install -q -e ".[data,plots]"
  exit 0
fi
python -m pip install -q -e ".[test,data,plots,jax]"
# PyTorch, the third backend: on these machines torch 2.13.0 is a CPU wheel on local disk
# (754 MB installed, about 1.5 min); elsewhere pip may fetch a CUDA build of several GB
# (RANK1_KERAS_SKIP_TORCH=1 skips it; then test with RANK1_KERAS_TEST_BACKENDS="tensorflow jax").
if [ "${RANK1_KERAS_SKIP_TORCH:-0}" != "1" ]; then
  python -m pip install -q "torch==2.13.0"
fi
