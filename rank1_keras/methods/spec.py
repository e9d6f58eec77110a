"""One object per method: how it is built, converted, trained and evaluated.

Every method is one `MethodSpec` in its own file of this package,
registered by name. `convert(model, name)` uses its `conversion`;
`build_method_models`, the training loop, the binaries, `baselines.compare`
and the export ask it everything else (how many members, how the batch is
fed, how many evaluation passes), so adding a method is adding one file.

Example (a method of one's own):

    class Plain(MethodSpec):
        name = "plain"

        def build(self, build_plain, settings):
            return [build_plain()]

    register_method(Plain())
"""

import importlib

# The library's own methods, in the order tables and flags list them; each
# module registers its spec on import.
_BUILTIN_MODULES = ("deterministic", "dropout", "deep_ensemble", "batchensemble", "rank1", "lpbnn", "bella", "packed")
_SPECS = {}
_builtins_loaded = False


class MethodSpec:
    """What one method is, for every part of the library that runs it.

    Class attributes (override in a subclass):
        name: the method's name (`--method`, `convert(model, name)`).
        conversion: a `LayerConversions` (how `convert` rewrites layers), or
            None for methods that train plain models (deterministic, deep
            ensemble).
        member_rows: in training the model returns K member rows per example
            when the batch is tiled (`training_batch="tile"`).
        separate_models: the method trains K plain models one after another.
        stochastic: evaluation averages `num_eval_samples` passes.
        settings_fields: the `MethodSettings` fields the method reads beyond
            the shared ones (documentation, and the binaries' flag help).
    """

    name = None
    conversion = None
    member_rows = False
    separate_models = False
    stochastic = False
    settings_fields = ()

    def size(self, settings):
        """K: members (or particles) the method averages."""
        return settings.ensemble_size

    def training_batch(self, settings):
        """"tile" or "split": how a training batch reaches the members (unset: the conversion's default).

        Plain models (no conversion) see each example once: "tile", whatever the setting.
        """
        if self.conversion is None:
            return "tile"
        return settings.training_batch or self.conversion.default_training_batch

    def eval_samples(self, settings):
        """Forward passes averaged at evaluation."""
        return settings.num_eval_samples if self.stochastic else 1

    def check(self, settings):
        """Raises ValueError for settings that do not make this method (beyond each field's own range)."""

    def build(self, build_plain, settings):
        """The models to train: a list of `keras.Model`s built from `build_plain()`."""
        raise NotImplementedError

    def training_options(self, model, settings):
        """Extra `rank1_keras.tensorflow.training.loop.train` arguments (member data streams, gradient transforms)."""
        return {}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


def register_method(spec):
    """Registers `spec` (a `MethodSpec` instance) under `spec.name`; returns it."""
    if not isinstance(spec, MethodSpec) or not isinstance(spec.name, str) or not spec.name:
        raise ValueError(f"spec must be a MethodSpec instance with a name; got {spec!r}.")
    _SPECS[spec.name] = spec
    return spec


def unregister_method(name):
    """Removes a method added with `register_method` (tests, plug-ins)."""
    _SPECS.pop(name, None)


def _load_builtins():
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"rank1_keras.methods.{module}")


def _table_position(spec):
    module = type(spec).__module__.rsplit(".", 1)[-1]
    builtin = type(spec).__module__.startswith("rank1_keras.methods.") and module in _BUILTIN_MODULES
    return _BUILTIN_MODULES.index(module) if builtin else len(_BUILTIN_MODULES)


def method_names():
    """Every registered method's name: the library's own first, in table order, then the others as registered."""
    _load_builtins()
    return tuple(sorted(_SPECS, key=lambda name: _table_position(_SPECS[name])))  # stable: registration order


def method_spec(name):
    """The `MethodSpec` registered as `name`; a ValueError naming the choices otherwise."""
    _load_builtins()
    if name not in _SPECS:
        raise ValueError(f"method must be one of {list(_SPECS)}; got method={name!r}.")
    return _SPECS[name]
