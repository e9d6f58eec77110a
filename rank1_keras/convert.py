"""Turn any Sequential or functional Keras model into an ensemble or a Bayesian network.

    converted = rank1_keras.convert(model, "rank1", ensemble_size=4)

The public home of the converter; its engine is `rank1_keras.methods.converter`
and each method's layer conversions live in its spec (`rank1_keras.methods`).
"""

from rank1_keras.methods.converter import (
    BATCH_NORM_MODES,
    ConversionSummary,
    StackMembers,
    conversion_summary,
    convert,
    join_ensemble,
    member_output_types,
    member_outputs,
    methods,
    set_mc_dropout,
)
from rank1_keras.methods.folding import fold_members

__all__ = [
    "BATCH_NORM_MODES",
    "ConversionSummary",
    "StackMembers",
    "conversion_summary",
    "convert",
    "fold_members",
    "join_ensemble",
    "member_output_types",
    "member_outputs",
    "methods",
    "set_mc_dropout",
]
