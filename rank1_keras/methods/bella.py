"""Bella (Doan et al., AAAI 2025): low-rank perturbations of a frozen pre-trained network.

Particle i owns W_i = W0 + (α/r) B_i A_i on the perturbed layers; W0 comes
from `pretrained_checkpoint` (a finished run's directory, a checkpoint
`.npz`, or a Keras `.weights.h5` / `.keras` file of the same architecture).
`bella_trainer="ensemble"` trains each particle on its own data order (the
loop's member streams); `"svgd"` moves the particles with SVGD (a gradient
transform over their concatenated low-rank parameters).
"""

import json
import os

import keras

from rank1_keras.layers.low_rank import Conv1DLowRankEnsemble, Conv2DLowRankEnsemble, DenseLowRankEnsemble
from rank1_keras.methods.conversions import LOW_RANK_OPTIONS, LayerConversions, convert_low_rank
from rank1_keras.methods.spec import MethodSpec, register_method


def load_pretrained(model, path):
    """Loads trained weights into `model` from a run directory, a checkpoint or a Keras weights file.

    Every failure is a `CheckpointError` that names `pretrained_checkpoint`
    and, for a training run of another method or architecture, says which.
    """
    from rank1_keras.training.checkpoint import CheckpointError, latest_checkpoint, restore_model_weights

    flag = f"pretrained_checkpoint={path}"
    expected = "a deterministic run's --output_dir, its ckpt-*.npz, or a Keras .weights.h5 / .keras file of the same architecture"
    if path.endswith((".weights.h5", ".keras")):
        if not os.path.isfile(path):
            raise CheckpointError(f"{flag} does not exist; pass {expected}.")
        try:
            if path.endswith(".weights.h5"):
                model.load_weights(path)
            else:
                model.set_weights(keras.saving.load_model(path, compile=False).get_weights())
        except Exception as error:  # h5py, zip and Keras' own errors: the file is not these weights
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(
                f"{flag} could not be loaded into this architecture ({type(error).__name__}: {first_line}); "
                f"pass {expected}."
            ) from error
        return model
    run_dir = None
    if os.path.isdir(path):
        run_dir = path
        directory = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
        checkpoint = latest_checkpoint(directory)
        if checkpoint is None:
            raise CheckpointError(f"{flag} holds no readable checkpoint; pass {expected}.")
        path = checkpoint
    if not path.endswith(".npz") or not os.path.exists(path):
        raise ValueError(f"{flag} must be {expected}.")
    try:
        restore_model_weights(path, model)
    except CheckpointError as error:
        trained = ""
        settings_path = os.path.join(run_dir or os.path.dirname(os.path.dirname(os.path.abspath(path))), "run_settings.json")
        if os.path.isfile(settings_path):
            with open(settings_path, encoding="utf-8") as stream:
                method = json.load(stream).get("method", {}).get("method")
            trained = f" It is a --method={method} run."
        raise CheckpointError(
            f"{flag} does not fit the plain network Bella perturbs: {error}{trained} Pass {expected}."
        ) from error
    return model


class Bella(MethodSpec):
    name = "bella"
    conversion = LayerConversions(
        {
            keras.layers.Dense: convert_low_rank(DenseLowRankEnsemble),
            keras.layers.Conv1D: convert_low_rank(Conv1DLowRankEnsemble),
            keras.layers.Conv2D: convert_low_rank(Conv2DLowRankEnsemble),
        },
        layer_classes=(DenseLowRankEnsemble, Conv1DLowRankEnsemble, Conv2DLowRankEnsemble),
        converts_batch_norm=False,
        freezes_unconverted=True,
        passes_options=LOW_RANK_OPTIONS,
    )
    member_rows = True
    settings_fields = ("bella_rank", "bella_num_particles", "bella_trainer", "bella_layers", "bella_prior_stddev",
                       "pretrained_checkpoint")

    def size(self, settings):
        return settings.bella_num_particles

    def training_batch(self, settings):
        # The ensemble trainer feeds each particle its own block of the batch (its own data order).
        return "split" if settings.bella_trainer == "ensemble" else "tile"

    def check(self, settings):
        if settings.bella_trainer == "svgd" and settings.bella_num_particles < 2:
            raise ValueError(f"bella_trainer='svgd' needs bella_num_particles >= 2; got {settings.bella_num_particles}.")

    def build(self, build_plain, settings):
        from rank1_keras.bella import to_bella

        base = build_plain()
        if settings.pretrained_checkpoint:
            load_pretrained(base, settings.pretrained_checkpoint)
        return [
            to_bella(
                base,
                num_particles=settings.bella_num_particles,
                rank=settings.bella_rank,
                layers=list(settings.bella_layers) or None,
                training_batch=self.training_batch(settings),
            )
        ]

    def training_options(self, model, settings):
        """Bella-ensemble: one data order per particle; Bella-SVGD: the SVGD transform of the particles' gradients."""
        if settings.bella_trainer == "ensemble":
            return {"member_streams": settings.bella_num_particles}
        import tensorflow as tf

        from rank1_keras.bella import particle_variables
        from rank1_keras.training import svgd

        particles = particle_variables(model)

        def transform(variables, gradients):
            return svgd.transform_gradients(
                variables,
                gradients,
                particles,
                settings.train_size,
                prior_stddev=settings.bella_prior_stddev,
                # The loop's loss averages the particles' NLLs (AverageNLL).
                loss_gradient_scale=float(settings.bella_num_particles),
                num_replicas=tf.distribute.get_strategy().num_replicas_in_sync,
            )

        return {"gradient_transform": transform}


register_method(Bella())
