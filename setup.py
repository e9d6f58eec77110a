"""rank1-keras: rank-1 Bayesian neural networks and efficient ensembles for Keras 3."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

setup(
    name="rank1-keras",
    version="0.1.0",
    description="Rank-1 Bayesian neural networks, BatchEnsemble and ensembles as Keras 3 layers",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rank1_keras", "rank1_keras.*", "baselines", "baselines.*"]),
    install_requires=[
        # The checked stack: TFP's [tf] extra brings tf-keras, which TFP
        # imports even though rank1_keras only uses Keras 3.
        "tensorflow==2.21.*",
        "tensorflow-probability[tf]==0.25.*",
        "keras>=3.15,<4",
        "tensorflow-datasets==4.9.*",
        "absl-py>=2.0",
        # tf.summary writes TensorBoard event files only when tensorboard is installed.
        "tensorboard==2.21.*",
        "numpy>=1.26",
    ],
    extras_require={
        # Embedded real data sets that ship inside packages: scikit-learn's
        # digits and the UCR/UEA time series in the sktime wheel.
        "data": ["scikit-learn>=1.3", "sktime==1.2.*"],
        "plots": ["matplotlib>=3.7"],
        # edward2 0.0.2 is a numerical reference for the tests only; the tests
        # also compare against scikit-learn/scipy and draw plots.
        "test": [
            "pytest>=8",
            # Two test processes on 2 cores: 11 instead of 15 minutes (TensorFlow
            # leaves a core idle through tracing and subprocess start-up).
            "pytest-xdist>=3.5",
            "edward2==0.0.2",
            "scikit-learn>=1.3",
            "scipy>=1.10",
            "sktime==1.2.*",
            "matplotlib>=3.7",
        ],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # The other Keras backends the layers run on (the tests run on all three).
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.1"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
