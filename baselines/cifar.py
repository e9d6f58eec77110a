r"""CIFAR-10 / CIFAR-100 with a Wide ResNet (default WRN-28-10), every method.

    python -m baselines.cifar --flagfile=configs/cifar10/rank1_gaussian.cfg \
        --data_dir=/path/to/tensorflow_datasets --output_dir=/tmp/cifar10_rank1

Defaults are the rank-1 paper's CIFAR settings (uncertainty-baselines' rank-1
WRN-28-10): K=4, prior N(1, 0.1^2), random-sign init 0.5, SGD-Nesterov 0.1
per 128 examples, 250 epochs, L2 1e-4, KL annealed over 200 epochs. CIFAR-10
is evaluated on CIFAR-10-C (every corruption and severity) and against
CIFAR-100 as the OOD set (and the reverse for CIFAR-100).
"""

from baselines import common

common.define_flags(("cifar10", "cifar100"))

if __name__ == "__main__":
    common.run()
