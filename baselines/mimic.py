r"""MIMIC-III in-hospital mortality from per-stay event sequences with an LSTM.

    python -m baselines.mimic --flagfile=configs/mimic/rank1.cfg \
        --data_dir=/path/to/mimic_export --output_dir=/tmp/mimic_rank1

The data is a local export in the CSV format of `rank1_keras.data.mimic`
(MIMIC-III is credentialed; nothing is downloaded). Defaults: K=4, Adam 1e-3
per 128 stays, 50 epochs, prior N(1, 0.1^2), KL annealed over 25 epochs; the
paper's exact MIMIC hyper-parameters are not public in code, so these are our
choices (see README).
"""

from baselines import common

common.define_flags(
    ("mimic",),
    optimizer="adam",
    base_learning_rate=1e-3,
    per_core_batch_size=128,
    train_epochs=50,
    lr_warmup_epochs=0.0,
    lr_decay_epochs=[],
    kl_annealing_epochs=25.0,
    random_sign_init=-0.5,
    l2=0.0,
)

if __name__ == "__main__":
    common.run()
