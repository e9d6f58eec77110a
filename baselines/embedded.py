r"""The embedded real data sets (no download): images and time series, every method.

    python -m baselines.embedded --dataset=fashion_mnist --method=rank1 --output_dir=/tmp/fmnist_rank1

Data sets: fashion_mnist (Debian's dataset-fashion-mnist, small CNN or a small
Wide ResNet), digits (scikit-learn), japanese_vowels, italy_power_demand and
gunpoint (UCR/UEA files in the sktime wheel, LSTM). Defaults are sized for 2
CPU cores: Adam 1e-3 per 128 examples, 2 epochs, K=4, prior N(1, 0.1^2) with
means from N(1, 0.5^2), KL annealed over the first epoch, 10% of the training
set held out for temperature scaling.
"""

from baselines import common
from rank1_keras.training.tasks import EMBEDDED_TASKS

common.define_flags(
    EMBEDDED_TASKS,
    optimizer="adam",
    base_learning_rate=1e-3,
    per_core_batch_size=128,
    train_epochs=2,
    lr_warmup_epochs=0.0,
    lr_decay_epochs=[],
    kl_annealing_epochs=1.0,
    random_sign_init=-0.5,
    l2=0.0,
    validation_percent=10.0,
    depth=10,
    width_multiplier=2.0,
)

if __name__ == "__main__":
    common.run()
