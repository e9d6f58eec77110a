"""Layer cost on JAX and PyTorch: the `benchmarks.gpu_ready` layer measurements as a section of `benchmarks.all`.

    python -m benchmarks.all --only backend_layers

The TensorFlow layer section (`benchmarks.layers`) compares against edward2
and tfp.layers under `tf.function`; this one times the same kinds of layer
on the other backends through what a Keras user calls: one-layer models,
`train_on_batch` and `predict_on_batch`, plain against BatchEnsemble and
rank-1 on the same K*B rows, each backend in its own process.
"""

from benchmarks import gpu_ready, serving

BACKENDS = ("jax", "torch")


def run(quick=False, output_dir=None, backends=BACKENDS):
    """The section: {"title", "markdown", "figures", "data"}."""
    results = gpu_ready.run_workers(backends, quick, ("layers",))
    parts = [
        "K = 4. Dense 1024→1024 on 256 rows and Conv2D 3×3 32×32×64 → 64 on 8 rows (16× more on a GPU), "
        "as one-layer models (rank-1 without its KL term); `train step` = `train_on_batch` (SGD, MSE; a first "
        "layer: no input gradient, so compare with the TensorFlow section's first-layer column), `inference` = "
        "`predict_on_batch`; "
        f"ratio = median over {5 if quick else 30} interleaved rounds of (variant time / plain layer time)."
    ]
    for result in results:
        heading, measured = serving.backend_heading(result)
        parts += heading
        if measured:
            parts += gpu_ready.render_layers(result, level="####")
    return {"title": "Layer cost on JAX and PyTorch", "markdown": "\n\n".join(parts), "figures": [], "data": {"results": results}}
