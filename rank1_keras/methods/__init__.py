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
"""

from rank1_keras.methods.spec import MethodSpec, method_names, method_spec, register_method, unregister_method

__all__ = ["MethodSpec", "method_names", "method_spec", "register_method", "unregister_method"]
