"""Tasks: a data set, its evaluation sets and its default architecture.

| task                | data                                      | OOD                         | shifts            | architecture |
|---------------------|-------------------------------------------|-----------------------------|-------------------|--------------|
| fashion_mnist       | Debian `dataset-fashion-mnist` (embedded) | scikit-learn digits, 28x28  | noise/blur/contrast x 5 | small_cnn / wide_resnet |
| digits              | scikit-learn digits (embedded), 80/20     | Fashion-MNIST, 8x8          | noise/blur/contrast x 5 | small_cnn (same padding) |
| japanese_vowels     | sktime UCR/UEA (embedded), 9 speakers     | held-out speakers 8 and 9   | -                 | lstm         |
| italy_power_demand  | sktime UCR/UEA (embedded), binary         | GunPoint series             | -                 | lstm         |
| gunpoint            | sktime UCR/UEA (embedded), binary         | ItalyPowerDemand series     | -                 | lstm         |
| cifar10, cifar100   | tfds in `data_dir`                        | the other CIFAR             | CIFAR-10-C (cifar10) | wide_resnet |
| imagenet2012        | tfds in `data_dir`                        | -                           | -                 | resnet50     |
| mimic               | local CSV export (`rank1_keras.data.mimic`) | -                         | -                 | lstm         |
| glyph_segmentation  | scikit-learn digits composited on 32x32 canvases, a class per pixel (`rank1_keras.data.glyph_canvases`) | a Fashion-MNIST patch per canvas (pixel level) | noise/blur/contrast x 5 | small_unet |

Sequences get one extra constant-1 channel on real steps, so the LSTM's
`Masking(0.0)` sees exactly the padding, even where every feature is 0
(`rank1_keras.data.sequences`).

The NumPy preparation lives in `rank1_keras.data` (`splits`, `sequences`,
`shifts.shifted_sets`), the tf.data and tfds glue in `task_data`; this module
defines what a task is and assembles each one.
"""

import dataclasses

import numpy as np

from rank1_keras import validation
from rank1_keras.data.sequences import pad_and_standardise
from rank1_keras.data.shifts import shifted_sets
from rank1_keras.data.splits import first_examples, fixed_split, hold_out
from rank1_keras.tensorflow.export import ServingInput
from rank1_keras.tensorflow.training.evaluation import EvaluationSets
from rank1_keras.tensorflow.training.loop import TrainData
from rank1_keras.tensorflow.training.task_data import arrays_data, cifar_sets, imagenet_sets

ARCHITECTURES = ("small_cnn", "wide_resnet", "resnet50", "lstm", "small_unet")


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """The data and architecture flags of the binaries.

    Attributes:
        data_dir: where the data lives (None: the embedded default location).
        validation_percent: percent of the training set held out for
            temperature scaling (0: none).
        train_examples, test_examples: use only the first N (0: all).
        shift_examples: test images per shifted set (embedded images).
        corruptions: CIFAR-10-C / shift corruption types (None: all; () none).
        corruption_severities: severities to evaluate.
        ood: whether to evaluate the task's OOD sets.
        architecture: None (the task's default) or one of `ARCHITECTURES`.
        depth, width_multiplier: Wide ResNet / ResNet sizes (None: defaults).
        lstm_units: LSTM state size.
        l2: L2 weight decay on the architecture's weights.
        dropout_rate: Dropout layers inside the architecture (MC dropout uses them).
        image_size: ImageNet crop size.
    """

    data_dir: str = None
    validation_percent: float = 0.0
    train_examples: int = 0
    test_examples: int = 0
    shift_examples: int = 2000
    corruptions: tuple = None
    corruption_severities: tuple = (1, 2, 3, 4, 5)
    ood: bool = True
    architecture: str = None
    depth: int = None
    width_multiplier: float = None
    lstm_units: int = 64
    l2: float = 0.0
    dropout_rate: float = 0.0
    image_size: int = 224

    def __post_init__(self):
        # 0 means "all"; a negative count would silently mean "all but the last |N|".
        for name in ("train_examples", "test_examples", "shift_examples"):
            validation.check_non_negative_int(getattr(self, name), name)
        validation.check_rate(self.dropout_rate, "dropout_rate")
        if not 0.0 <= self.validation_percent < 100.0:
            raise ValueError(f"validation_percent must be in [0, 100); got {self.validation_percent}.")
        if self.architecture is not None:
            validation.check_choice(self.architecture, "architecture", ARCHITECTURES)


@dataclasses.dataclass
class Task:
    """A loaded task: training data, evaluation sets and a plain-model builder."""

    name: str
    num_classes: int
    input_shape: tuple
    train: TrainData
    evaluation: EvaluationSets
    build_plain: object  # () -> a fresh plain keras.Model
    model_spec: dict  # rebuilds build_plain without the data: `plain_builder(model_spec, options)`
    serving_input: object  # rank1_keras.tensorflow.export.ServingInput: raw examples -> this task's model input
    notes: str = ""
    # Labelled positions per example: H*W for segmentation, whose losses average over
    # pixels, so the KL is scaled by 1/(examples x positions) to keep the ELBO's balance.
    positions_per_example: int = 1

    @property
    def architecture(self):
        return self.model_spec["architecture"]


def plain_builder(model_spec, options):
    """() -> a fresh plain model for a task's `model_spec` and the `TaskOptions`.

    `model_spec` is the JSON-able dict a task records (architecture,
    input_shape, num_classes, padding), so an export can rebuild the model
    of a finished run without loading its data.
    """
    from rank1_keras.models.lstm_classifier import lstm_classifier
    from rank1_keras.models.resnet50 import resnet50
    from rank1_keras.models.small_cnn import small_cnn
    from rank1_keras.models.small_unet import small_unet
    from rank1_keras.models.wide_resnet import wide_resnet

    architecture = model_spec["architecture"]
    input_shape, num_classes = tuple(model_spec["input_shape"]), int(model_spec["num_classes"])
    if architecture == "small_cnn":
        return lambda: small_cnn(
            input_shape, num_classes, l2=options.l2, dropout_rate=options.dropout_rate, padding=model_spec["padding"]
        )
    if architecture == "wide_resnet":
        return lambda: wide_resnet(
            options.depth or 28,
            int(options.width_multiplier or 10),
            num_classes,
            input_shape,
            l2=options.l2,
            dropout_rate=options.dropout_rate,
        )
    if architecture == "resnet50":
        return lambda: resnet50(num_classes, input_shape, width_multiplier=options.width_multiplier or 1.0, l2=options.l2)
    if architecture == "small_unet":
        return lambda: small_unet(input_shape, num_classes, l2=options.l2, dropout_rate=options.dropout_rate)
    validation.check_choice(architecture, "architecture", ARCHITECTURES)
    return lambda: lstm_classifier(
        input_shape[-1], num_classes, units=options.lstm_units, dropout_rate=options.dropout_rate, l2=options.l2
    )


def _image_builder(options, input_shape, num_classes, default="small_cnn", padding="valid"):
    architecture = options.architecture or default
    if architecture not in ("small_cnn", "wide_resnet", "resnet50"):
        raise ValueError(f"architecture={architecture!r} does not take images; use small_cnn, wide_resnet or resnet50.")
    spec = {"architecture": architecture, "input_shape": list(input_shape), "num_classes": int(num_classes),
            "padding": padding}
    return plain_builder(spec, options), spec


def _segmentation_builder(options, input_shape, num_classes):
    if (options.architecture or "small_unet") != "small_unet":
        raise ValueError(f"architecture={options.architecture!r} does not segment images; use small_unet.")
    spec = {"architecture": "small_unet", "input_shape": list(input_shape), "num_classes": int(num_classes),
            "padding": "same"}
    return plain_builder(spec, options), spec


def _sequence_builder(options, input_shape, num_classes):
    if (options.architecture or "lstm") != "lstm":
        raise ValueError(f"architecture={options.architecture!r} does not take sequences; use lstm.")
    spec = {"architecture": "lstm", "input_shape": list(input_shape), "num_classes": int(num_classes), "padding": None}
    return plain_builder(spec, options), spec


def _shifted_sets(options, images, labels, seed=0):
    shifted = shifted_sets(
        images, labels, options.corruptions, options.corruption_severities, options.shift_examples, seed=seed
    )
    return {key: arrays_data(*arrays) for key, arrays in shifted.items()}


def _image_task(
    name, options, train, test, ood, serving_input, default_architecture="small_cnn", padding="valid", notes="",
    num_classes=None, background_class=None,
):
    """`train`, `test`: (images, labels); `ood`: {name: (images, labels)}.

    Segmentation (`background_class` set): labels are per-pixel maps, the
    model is the small U-Net, and the task counts H*W positions per example.
    """
    train, test = first_examples(train, options.train_examples), first_examples(test, options.test_examples)
    train, held_out = hold_out(*train, options.validation_percent)
    num_classes = num_classes or int(max(train[1].max(), test[1].max())) + 1
    input_shape = tuple(train[0].shape[1:])
    if background_class is None:
        builder, spec = _image_builder(options, input_shape, num_classes, default_architecture, padding)
    else:
        builder, spec = _segmentation_builder(options, input_shape, num_classes)
    return Task(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape,
        train=arrays_data(*train),
        evaluation=EvaluationSets(
            test=arrays_data(*test),
            validation=arrays_data(*held_out) if held_out else None,
            ood={key: arrays_data(*arrays) for key, arrays in ood.items()} if options.ood else {},
            shifted=_shifted_sets(options, *test),
            background_class=background_class,
        ),
        build_plain=builder,
        model_spec=spec,
        serving_input=serving_input,
        notes=notes,
        positions_per_example=1 if background_class is None else int(np.prod(input_shape[:2])),
    )


def fashion_mnist_task(options):
    from rank1_keras.data import load_digits, load_fashion_mnist

    train = load_fashion_mnist(options.data_dir, "train")
    test = load_fashion_mnist(options.data_dir, "test")
    digits, _ = load_digits(image_size=(28, 28)) if options.ood else (None, None)
    return _image_task(
        "fashion_mnist", options, train, test, {"digits": (digits, np.zeros(len(digits)))} if options.ood else {},
        ServingInput.images("uint8", scale=1.0 / 255.0),  # the loader's x / 255
        notes="Fashion-MNIST (Debian dataset-fashion-mnist); OOD: scikit-learn digits resized to 28x28",
    )


def digits_task(options):
    from rank1_keras.data import load_digits, load_fashion_mnist
    from rank1_keras.data.digits import DIGITS_MAX_VALUE, resize_bilinear

    images, labels = load_digits()
    train_indices, test_indices = fixed_split(len(labels))  # a fixed split, the same for every run
    train = (images[train_indices], labels[train_indices])
    test = (images[test_indices], labels[test_indices])
    ood = {}
    if options.ood:
        fashion, _ = load_fashion_mnist(None, "test")
        ood["fashion_mnist"] = (resize_bilinear(fashion[:1000, :, :, 0], (8, 8))[..., None], np.zeros(1000))
    return _image_task(
        "digits", options, train, test, ood, ServingInput.images("uint8", scale=1.0 / DIGITS_MAX_VALUE), padding="same",
        notes="scikit-learn digits, fixed 80/20 split; OOD: Fashion-MNIST test images resized to 8x8",
    )


def glyph_segmentation_task(options):
    """Segmentation of digits glyphs composited on 32x32 canvases (see `rank1_keras.data.glyph_canvases`).

    3,000 training and 600 test canvases (3 glyphs each, 11 classes: background
    and the ten digits), glyphs from the digits task's fixed 80/20 split; OOD:
    300 canvases whose third object is a Fashion-MNIST test image resized to
    8x8, scored on its ink pixels against the test canvases' digit ink.
    """
    from rank1_keras.data import load_digits, load_fashion_mnist
    from rank1_keras.data.digits import DIGITS_MAX_VALUE, resize_bilinear
    from rank1_keras.data.glyph_canvases import make_canvases, make_ood_canvases

    glyphs, digits = load_digits()
    train_glyphs, test_glyphs = fixed_split(len(digits))  # the digits task's split
    train = make_canvases(glyphs[train_glyphs], digits[train_glyphs], 3000, seed=1)
    test = make_canvases(glyphs[test_glyphs], digits[test_glyphs], 600, seed=2)
    ood = {}
    if options.ood:
        fashion, _ = load_fashion_mnist(None, "test")
        patches = resize_bilinear(fashion[:1000, :, :, 0], (8, 8))[..., None]
        ood["fashion_patch"] = make_ood_canvases(glyphs[test_glyphs], patches, 300, seed=3)
    return _image_task(
        "glyph_segmentation", options, train, test, ood, ServingInput.images("uint8", scale=1.0 / DIGITS_MAX_VALUE),
        notes="scikit-learn digits glyphs, 3 per 32x32 canvas, a class per pixel (11); "
        "OOD: a Fashion-MNIST patch per canvas, pixel level",
        num_classes=11,
        background_class=0,
    )


# -- sequences ----------------------------------------------------------------


def _sequence_serving_input(statistics):
    mean, std = statistics
    return ServingInput.sequences(mean=tuple(mean.tolist()), stddev=tuple(std.tolist()))


def _ucr(name, split):
    from rank1_keras.data import load_ucr_uea

    sequences, lengths, labels, _ = load_ucr_uea(name, split)
    return sequences, lengths, labels


def _sequence_task(name, options, train, test, ood, notes):
    """`train`, `test`: (sequences, lengths, labels); `ood`: {name: (sequences, lengths)}."""
    (train_x, test_x, *ood_values), statistics = pad_and_standardise(train[:2], [test[:2], *ood.values()])
    ood_x = dict(zip(ood, ood_values))
    train_arrays = first_examples((train_x, train[2]), options.train_examples)
    test_arrays = first_examples((test_x, test[2]), options.test_examples)
    train_arrays, held_out = hold_out(*train_arrays, options.validation_percent)
    num_classes = int(max(train_arrays[1].max(), test_arrays[1].max())) + 1
    builder, spec = _sequence_builder(options, train_x.shape[1:], num_classes)
    return Task(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(train_x.shape[1:]),
        train=arrays_data(*train_arrays),
        evaluation=EvaluationSets(
            test=arrays_data(*test_arrays),
            validation=arrays_data(*held_out) if held_out else None,
            ood={key: arrays_data(value, np.zeros(len(value))) for key, value in ood_x.items()} if options.ood else {},
        ),
        build_plain=builder,
        model_spec=spec,
        serving_input=_sequence_serving_input(statistics),
        notes=notes,
    )


def japanese_vowels_task(options):
    held_out_classes = (7, 8)  # speakers 8 and 9 are the OOD set
    train, test = _ucr("JapaneseVowels", "train"), _ucr("JapaneseVowels", "test")

    def keep(arrays, inside):
        chosen = np.isin(arrays[2], held_out_classes) != inside
        return tuple(a[chosen] for a in arrays)

    ood = keep(test, inside=False)
    return _sequence_task(
        "japanese_vowels", options, keep(train, True), keep(test, True), {"held_out_speakers": ood[:2]},
        notes="JapaneseVowels (UCR/UEA, sktime wheel), speakers 1-7; OOD: speakers 8-9",
    )


def _binary_pair_task(name, dataset, ood_name, ood_dataset):
    def load(options):
        ood = _ucr(ood_dataset, "test")
        return _sequence_task(
            name, options, _ucr(dataset, "train"), _ucr(dataset, "test"), {ood_name: ood[:2]},
            notes=f"{dataset} (UCR/UEA, sktime wheel); OOD: {ood_dataset} test series",
        )

    return load


# -- tfds and local data --------------------------------------------------------


def _cifar_task(name):
    def load(options):
        from rank1_keras.tensorflow import tfds_images

        train, test, validation_set, ood, shifted = cifar_sets(name, options)
        num_classes = tfds_images.num_classes(name)
        builder, spec = _image_builder(options, (32, 32, 3), num_classes, default="wide_resnet")
        return Task(
            name=name,
            num_classes=num_classes,
            input_shape=(32, 32, 3),
            train=train,
            evaluation=EvaluationSets(
                test=test,
                validation=validation_set,
                ood=ood,
                shifted=shifted,
            ),
            build_plain=builder,
            model_spec=spec,
            serving_input=ServingInput.images(
                "uint8", scale=1.0 / 255.0, mean=tfds_images.CIFAR_MEAN, stddev=tfds_images.CIFAR_STD
            ),
            notes=f"{name} from tfds in {options.data_dir}",
        )

    return load


def imagenet_task(options):
    from rank1_keras.tensorflow import tfds_images

    input_shape = (options.image_size, options.image_size, 3)
    builder, spec = _image_builder(options, input_shape, 1000, default="resnet50")
    train, test, validation_set = imagenet_sets(options)
    return Task(
        name="imagenet2012",
        num_classes=1000,
        input_shape=input_shape,
        train=train,
        evaluation=EvaluationSets(test=test, validation=validation_set),
        build_plain=builder,
        model_spec=spec,
        serving_input=ServingInput.images(
            "uint8",
            scale=1.0 / 255.0,
            mean=tfds_images.IMAGENET_MEAN,
            stddev=tfds_images.IMAGENET_STD,
            central_crop_fraction=tfds_images.CENTRAL_CROP_FRACTION,
        ),
        notes=f"imagenet2012 from tfds in {options.data_dir}; test = the validation split",
    )


def mimic_task(options):
    from rank1_keras.data.mimic import load_mimic

    splits = {}
    for split in ("train", "validation", "test"):
        loaded = load_mimic(options.data_dir, split)
        splits[split] = (loaded["features"], loaded["lengths"], loaded["labels"])
    (train_x, validation_x, test_x), statistics = pad_and_standardise(
        splits["train"][:2], [splits["validation"][:2], splits["test"][:2]]
    )
    train = first_examples((train_x, splits["train"][2]), options.train_examples)
    test = first_examples((test_x, splits["test"][2]), options.test_examples)
    builder, spec = _sequence_builder(options, train_x.shape[1:], 2)
    return Task(
        name="mimic",
        num_classes=2,
        input_shape=tuple(train_x.shape[1:]),
        train=arrays_data(*train),
        evaluation=EvaluationSets(
            test=arrays_data(*test), validation=arrays_data(validation_x, splits["validation"][2])
        ),
        build_plain=builder,
        model_spec=spec,
        serving_input=_sequence_serving_input(statistics),
        notes=f"MIMIC-III mortality export in {options.data_dir}",
    )


TASKS = {
    "fashion_mnist": fashion_mnist_task,
    "digits": digits_task,
    "japanese_vowels": japanese_vowels_task,
    "italy_power_demand": _binary_pair_task("italy_power_demand", "ItalyPowerDemand", "gunpoint", "GunPoint"),
    "gunpoint": _binary_pair_task("gunpoint", "GunPoint", "italy_power_demand", "ItalyPowerDemand"),
    "cifar10": _cifar_task("cifar10"),
    "cifar100": _cifar_task("cifar100"),
    "imagenet2012": imagenet_task,
    "mimic": mimic_task,
    "glyph_segmentation": glyph_segmentation_task,
}
EMBEDDED_TASKS = ("fashion_mnist", "digits", "japanese_vowels", "italy_power_demand", "gunpoint", "glyph_segmentation")


def load_task(name, options):
    """Loads the task `name` (a key of `TASKS`) with `options` (a `TaskOptions`)."""
    validation.check_choice(name, "dataset", tuple(TASKS))
    return TASKS[name](options)
