"""The regression comparison example: every method trains on diabetes and gives a sound mixture."""

import numpy as np

from examples import regression_comparison as rc


def test_every_method_gives_a_regression_mixture_and_a_table_row():
    methods = ["deterministic", "dropout", "ensemble", "batchensemble", "rank1", "lpbnn", "bella"]
    results, table = rc.compare(methods, seeds=1, epochs=3, ensemble_size=2)
    for method in methods:
        assert f"| {method} |" in table
        (result,) = results[method]
        assert np.isfinite(result["rmse"]) and np.isfinite(result["nll"])
        assert 0.0 <= result["coverage_90"] <= result["coverage_95"] <= 1.0
        assert result["variance_scale"] > 0
    # One network has no spread between members; the ensembles do.
    assert results["deterministic"][0]["epistemic_variance"] == 0.0
    for method in ("dropout", "ensemble", "batchensemble", "rank1", "lpbnn"):
        assert results[method][0]["epistemic_variance"] > 0.0


def test_splits_are_fixed_and_standardised_on_training_statistics():
    (train_x, train_y), (validation_x, _), (test_x, _) = rc.diabetes_splits()
    assert (len(train_x), len(validation_x), len(test_x)) == (309, 66, 67)
    np.testing.assert_allclose(train_x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_y.std(), 1.0, rtol=1e-4)
    again = rc.diabetes_splits()[2][0]
    np.testing.assert_array_equal(test_x, again)
