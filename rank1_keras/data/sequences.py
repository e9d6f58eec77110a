"""Variable-length sequences as padded arrays with an observed channel, standardised per channel (NumPy only).

Each sequence gets one extra channel that is 1 on real steps and 0 on the
padding, so a `Masking(0.0)` layer sees exactly the padding, even where every
feature of a real step is 0 (the LSTM tasks' input; `ServingInput.sequences`
builds the same input from raw sequences and lengths).

Example:

>>> import numpy as np
>>> padded = with_observed_channel(np.ones((2, 2, 1), np.float32), [2, 1], 3)
>>> padded[..., 1]
array([[1., 1., 0.],
       [1., 0., 0.]], dtype=float32)
>>> (train,), (mean, std) = standardise(padded, [])
>>> train[0, :, 0].tolist(), mean.tolist()
([0.0, 0.0, 0.0], [1.0])
"""

import numpy as np


def with_observed_channel(sequences, lengths, length):
    """Pads to `length` steps and appends a channel that is 1 on real steps, 0 on padding."""
    count, steps, channels = sequences.shape
    padded = np.zeros((count, length, channels + 1), np.float32)
    padded[:, :steps, :channels] = np.nan_to_num(sequences)
    for index, real in enumerate(lengths):
        padded[index, :real, channels] = 1.0
        padded[index, real:, :channels] = 0.0
    return padded


def standardise(train, others):
    """Per-channel z-scores with the training set's statistics over real steps.

    Returns the standardised arrays and the (mean, std) used.
    """
    channels = train.shape[-1] - 1
    mask = train[..., channels] > 0
    values = train[mask][:, :channels]
    mean, std = values.mean(axis=0), values.std(axis=0) + 1e-6
    result = []
    for array in (train, *others):
        array = array.copy()
        real = array[..., channels] > 0
        array[..., :channels] = np.where(real[..., None], (array[..., :channels] - mean) / std, 0.0)
        result.append(array)
    return result, (mean, std)


def pad_and_standardise(train, others):
    """`with_observed_channel` to the longest of all sets, then `standardise` with the training set's statistics.

    `train` and each of `others`: (sequences, lengths). Returns
    `([train, *others] as padded, standardised arrays, (mean, std))`.
    """
    length = max(arrays[0].shape[1] for arrays in [train, *others])
    train_x = with_observed_channel(train[0], train[1], length)
    others_x = [with_observed_channel(sequences, lengths, length) for sequences, lengths in others]
    return standardise(train_x, others_x)
