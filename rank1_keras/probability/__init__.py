"""Edward2-style random variables and what rank-1 factors are drawn from.

Backend-agnostic: `distributions` (backed by `tensorflow_probability` on the
TensorFlow backend, the same maths in `keras.ops` on JAX and PyTorch),
`random_variable`, and the factors' `initializers` and KL `regularizers`.
"""
