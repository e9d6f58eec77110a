"""TensorFlow only: the `tf.distribute` training loop of the binaries, SavedModel export, TFDS pipelines.

Everything outside this folder runs on every Keras backend. Importing these
modules needs TensorFlow; their entry points fail with one clear error on
another backend (`rank1_keras.validation.require_tensorflow`).
"""
