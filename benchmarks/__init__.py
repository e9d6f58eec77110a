"""Benchmarks of rank1_keras: layer cost, model cost, (quality). See docs/benchmarks.md.

    python -m benchmarks.all --quick      # a few minutes; writes docs/benchmarks.md
    python -m benchmarks.all              # full mode
    python -m benchmarks.layers --quick   # one section, printed
"""
