"""`SVGDTrainer`: Bella-SVGD inside `model.fit` (TensorFlow only: its `train_step` uses `tf.GradientTape`).

The update rule itself, and its maths, is `rank1_keras.methods.svgd`.
"""

import keras
import tensorflow as tf

from rank1_keras import validation
from rank1_keras.methods.bella import num_particles, particle_variables
from rank1_keras.methods.svgd import transform_gradients

MEMBER_LOSS_REDUCTIONS = ("mean", "sum")


@keras.saving.register_keras_serializable(package="rank1_keras")
class SVGDTrainer(keras.Model):
    """Trains a Bella model's particles with SVGD inside `model.fit`.

    Wraps the model (`call` delegates to it) and overrides `train_step`
    (TensorFlow backend): forward pass, `compute_loss`, gradients, the SVGD
    transform of the particle variables' gradients (`transform_gradients`),
    `optimizer.apply`, metrics. Other trainable variables, if any, get their
    plain gradients. `predict` and `evaluate` are the wrapped model's.

    The loss compiled in must be the members' losses combined over the tiled
    (or split) batch: `AverageNLL(num_particles)` (the default
    `member_loss_reduction="mean"`: the loss is (1/n) sum_i L_i, so the
    gradient for particle i's slice is (1/n) grad L_i and is multiplied by n)
    or a loss summing them ("sum"). `MixtureNLL` couples the particles and is
    not a per-particle loss. The model's own losses (e.g. regularizers) join
    the loss as usual; the particle factors carry none (use `prior_stddev`).
    Use an optimizer without weight decay: the prior plays that role.

    Under a distribution strategy, Keras divides each replica's loss by the
    number of replicas and sums the replicas' gradients; the repulsion and
    prior terms, the same on every replica, are therefore divided by
    `tf.distribute.get_strategy().num_replicas_in_sync`.

    Args:
        model: a Bella model (`rank1_keras.bella.to_bella`) with >= 2 particles.
        train_size: N, the number of training examples (the likelihood's weight).
        prior_stddev: standard deviation of an isotropic Normal prior on theta;
            None (default) for a flat prior.
        member_loss_reduction: "mean" or "sum", how the compiled loss combines
            the particles' mean losses (see above).

    Example:

        trainer = SVGDTrainer(to_bella(pretrained, num_particles=4), train_size=len(x))
        trainer.compile(keras.optimizers.SGD(0.01), loss=rank1_keras.AverageNLL(4))
        trainer.fit(x, y, epochs=3)
        probabilities = trainer.predict(x)
    """

    def __init__(self, model, train_size, prior_stddev=None, member_loss_reduction="mean", **kwargs):
        validation.require_tensorflow("SVGDTrainer", "its train_step uses tf.GradientTape and tf.distribute")
        super().__init__(**kwargs)
        self.bella_model = model
        self.train_size = validation.check_positive_int(train_size, "train_size")
        if prior_stddev is not None:
            prior_stddev = validation.check_positive_finite(prior_stddev, "prior_stddev")
        self.prior_stddev = prior_stddev
        self.member_loss_reduction = validation.check_choice(
            member_loss_reduction, "member_loss_reduction", MEMBER_LOSS_REDUCTIONS
        )
        self.num_particles = num_particles(model)
        if self.num_particles < 2:
            raise ValueError(
                f"SVGD needs at least 2 particles; model has num_particles={self.num_particles}. "
                "Convert with to_bella(..., num_particles=2 or more)."
            )
        self.particle_variables = particle_variables(model)

    def call(self, inputs, training=None):
        return self.bella_model(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        # Undo a mixed-precision loss scale before SVGD and redo it after, so
        # that the repulsion is not scaled with the loss.
        loss_scale = self.optimizer.scale_loss(tf.ones((), dtype=scaled_loss.dtype))
        loss_scale = tf.cast(loss_scale, self.particle_variables[0].dtype)
        per_member = self.num_particles if self.member_loss_reduction == "mean" else 1
        transformed = transform_gradients(
            variables,
            gradients,
            self.particle_variables,
            self.train_size,
            prior_stddev=self.prior_stddev,
            loss_gradient_scale=per_member / loss_scale,
            num_replicas=num_replicas,
        )
        particle_ids = {id(v) for v in self.particle_variables}
        transformed = [
            g * loss_scale if id(v) in particle_ids else g for v, g in zip(variables, transformed)
        ]
        self.optimizer.apply(transformed, variables)
        # Keras divides each replica's loss by the replicas; the tracker shows the global mean.
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss * num_replicas, sample_weight=batch_size)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {
            **super().get_config(),
            "model": keras.saving.serialize_keras_object(self.bella_model),
            "train_size": self.train_size,
            "prior_stddev": self.prior_stddev,
            "member_loss_reduction": self.member_loss_reduction,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)
