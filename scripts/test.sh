#!/usr/bin/env bash
# The default test suite on each Keras backend: what CI runs and the README's test command.
# TensorFlow runs every test; JAX and PyTorch run the modules marked
# `pytest.mark.backends(...)` for them (tests/conftest.py deselects the rest: TensorFlow-only
# parts such as the tf.distribute loop, SavedModel export and tfds pipelines).
# RANK1_KERAS_TEST_BACKENDS="jax" runs one backend; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
for backend in ${RANK1_KERAS_TEST_BACKENDS:-tensorflow jax torch}; do
  echo "== KERAS_BACKEND=$backend =="
  start=$(date +%s)
  KERAS_BACKEND=$backend python -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
  echo "== KERAS_BACKEND=$backend: $(( $(date +%s) - start )) s =="
done
