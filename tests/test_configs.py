"""Every flagfile in configs/ parses with the binary's flags and sets what it says."""

import glob
import os

import pytest
from absl import flags

import baselines.fashion_mnist  # noqa: F401  (defines the flags)

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist_*.flags")))


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_flagfile_parses_and_sets_every_value(path):
    flags.FLAGS.unparse_flags()
    try:
        # Unknown or mistyped flags raise here.
        flags.FLAGS(["fashion_mnist", f"--flagfile={path}"])
        with open(path) as stream:
            written = dict(line.strip()[2:].split("=", 1) for line in stream if line.startswith("--"))
        assert written
        for name, text in written.items():
            assert flags.FLAGS[name].present, name
            assert flags.FLAGS[name].value == flags.FLAGS[name].parser.parse(text), name
    finally:
        flags.FLAGS.unparse_flags()
