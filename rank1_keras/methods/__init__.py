"""Methods, one file each: a `MethodSpec` says how the method is built, converted, trained and evaluated.

| file              | method          |
|-------------------|-----------------|
| deterministic.py  | one plain network |
| dropout.py        | MC dropout      |
| deep_ensemble.py  | K plain networks ("ensemble") |
| batchensemble.py  | BatchEnsemble   |
| rank1.py          | rank-1 BNN      |
| lpbnn.py          | LP-BNN          |
| bella.py          | Bella           |
| packed.py         | Packed-Ensembles |

`converter.py` is `rank1_keras.convert`'s engine (the clone, the tiling and
the averaging every converted model shares), `conversions.py` the layer
rewrites the specs combine, `settings.py` the `MethodSettings` the binaries
fill from their flags and `build_method_models`.
"""

from rank1_keras.methods.spec import MethodSpec, method_names, method_spec, register_method, unregister_method
from rank1_keras.methods.settings import MethodSettings, build_method_models, inference_model, training_options

__all__ = [
    "MethodSettings",
    "MethodSpec",
    "build_method_models",
    "inference_model",
    "method_names",
    "method_spec",
    "register_method",
    "training_options",
    "unregister_method",
]
