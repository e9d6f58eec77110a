"""Splits of in-memory example arrays: the first N, a fixed shuffled split, a held-out tail (NumPy only).

Example:

>>> import numpy as np
>>> features, labels = np.arange(10).reshape(5, 2), np.arange(5)
>>> first_examples((features, labels), 4)[1]
array([0, 1, 2, 3])
>>> (train, held_out) = hold_out(features, labels, 40)
>>> train[1], held_out[1]
(array([0, 1, 2]), array([3, 4]))
>>> [len(indices) for indices in fixed_split(10)]
[8, 2]
"""

import numpy as np


def first_examples(arrays, count):
    """The first `count` rows of each array of the tuple `arrays` (0: all of them)."""
    return tuple(a[:count] for a in arrays) if count else arrays


def hold_out(features, labels, percent):
    """The last `percent` of the training arrays becomes the validation split.

    Returns `((features, labels), (held_features, held_labels))`, or
    `((features, labels), None)` when `percent` of the examples rounds to 0.
    """
    held = int(round(len(labels) * percent / 100.0))
    if held == 0:
        return (features, labels), None
    return (features[:-held], labels[:-held]), (features[-held:], labels[-held:])


def fixed_split(count, fraction=0.8, seed=0):
    """(train indices, test indices) of `count` examples: a shuffle with `seed`, the first `fraction` for training.

    The same arguments give the same split in every run (the digits tasks' fixed 80/20 split).
    """
    order = np.random.default_rng(seed).permutation(count)
    cut = int(fraction * count)
    return order[:cut], order[cut:]
