"""The binaries' training machinery (TensorFlow only): strategies, the `strategy.run` loop, tasks, evaluation, SVGD."""
