r"""ImageNet (imagenet2012) with ResNet-50, every method.

    python -m baselines.imagenet --flagfile=configs/imagenet/rank1.cfg \
        --data_dir=/path/to/tensorflow_datasets --output_dir=/tmp/imagenet_rank1

Defaults follow uncertainty-baselines' rank-1 ResNet-50: K=4, 32 examples per
core (128 rows after tiling), random-sign init 0.75, prior stddev 0.05,
SGD-Nesterov 0.1 per 256 examples with 5 warm-up epochs and x0.1 at epochs
45/90/120 of 135, L2 1e-4, KL annealed over 90 epochs. The test set is the
ImageNet validation split.
"""

from baselines import common

common.define_flags(
    ("imagenet2012",),
    per_core_batch_size=32,
    random_sign_init=0.75,
    prior_stddev=0.05,
    base_batch_size=256,
    train_epochs=135,
    lr_warmup_epochs=5.0,
    lr_decay_epochs=["45", "90", "120"],
    lr_decay_ratio=0.1,
    kl_annealing_epochs=90.0,
    width_multiplier=1.0,
)

if __name__ == "__main__":
    common.run()
